"""kiwiPy's defaults (``kiwipy.rmq.defaults``), and the codecs of the compat layer.

kiwiPy encodes with ``yaml.dump`` and decodes with PyYAML's ``FullLoader``, which builds
Python objects named in the message (``!!python/name:`` resolves any importable function).
kiwi_anyio decodes safely; the compat layer keeps that, with one addition kiwiPy's clients
need: ``uuid.UUID`` (plumpy's process ids, sent as broadcast senders and in task bodies).

* :func:`ENCODER` writes what kiwi_anyio's safe YAML codec writes; a value it refuses only
  because it contains a ``uuid.UUID`` is written as ``yaml.dump`` (kiwiPy's encoder) writes
  it: ``!!python/object:uuid.UUID`` with ``int: N``. kiwiPy's ``FullLoader`` does **not**
  read that tag (PyYAML 6 keeps ``python/object:`` to its unsafe loader: ``ConstructorError``),
  so a kiwiPy receiver drops such a message, exactly as it drops the ones kiwiPy itself sends
  with a UUID in them; compat receivers decode it.
* :func:`DECODER` is kiwi_anyio's safe YAML decoder plus exactly that one tag, whose
  constructor builds a ``uuid.UUID`` from an integer and nothing else. Any other Python tag
  is refused, as by :data:`kiwi_anyio.codecs.YAML`.
* kiwiPy's own behaviour, as an explicit choice: :func:`FULL_LOADER_DECODER` (``yaml.load``
  with ``FullLoader``), set as the default with
  ``kiwi_anyio.compat.kiwipy.install(full_loader=True)`` or passed as ``decoder=``.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Final

import yaml

from ....codecs import YAML, Codec, SafeYamlLoader
from ....exceptions import UndecodableMessage

__all__ = [
    "DECODER",
    "ENCODER",
    "FULL_LOADER_DECODER",
    "MESSAGE_EXCHANGE",
    "QUEUE_EXPIRES",
    "TASK_EXCHANGE",
    "TASK_PREFETCH_COUNT",
    "TASK_PREFETCH_SIZE",
    "TASK_QUEUE",
    "codec_for",
]

MESSAGE_EXCHANGE: Final = "kiwipy.messages"
TASK_EXCHANGE: Final = "kiwipy.tasks"
TASK_QUEUE: Final = "kiwipy.tasks"
QUEUE_EXPIRES: Final = 60000
TASK_PREFETCH_SIZE: Final = 0
TASK_PREFETCH_COUNT: Final = 0  # kiwiPy's: no limit

_UUID_TAG: Final = "tag:yaml.org,2002:python/object:uuid.UUID"
_SAFE_TYPES: Final = frozenset(
    {type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, date, datetime}
)


class _UuidDumper(yaml.Dumper):
    """``yaml.Dumper`` for the safe types plus ``uuid.UUID``; anything else: ``TypeError``."""

    def represent_uuid(self, data: uuid.UUID) -> yaml.Node:
        """``!!python/object:uuid.UUID {int: N}``: what ``yaml.dump`` writes for a UUID."""
        return self.represent_mapping(_UUID_TAG, {"int": data.int})

    def represent_refused(self, data: Any) -> yaml.Node:
        """Refuse what a safe decoder could not read."""
        cls = type(data)
        raise TypeError(
            f"cannot encode an object of type {cls.__module__}.{cls.__qualname__} safely: "
            "use plain data (and uuid.UUID), or kiwiPy's codec with "
            "kiwi_anyio.compat.kiwipy.install(full_loader=True)"
        )


_UuidDumper.yaml_representers = {
    **{c: r for c, r in yaml.Dumper.yaml_representers.items() if c in _SAFE_TYPES},
    uuid.UUID: _UuidDumper.represent_uuid,  # type: ignore[dict-item]
    None: _UuidDumper.represent_refused,  # type: ignore[dict-item]
}
_UuidDumper.yaml_multi_representers = {}


class _UuidLoader(SafeYamlLoader):
    """kiwi_anyio's safe loader plus ``!!python/object:uuid.UUID`` (an integer, nothing else)."""

    def construct_uuid(self, node: yaml.Node) -> uuid.UUID:
        """Build a UUID from ``{int: N}`` (``is_safe`` is accepted and ignored)."""
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a UUID must be a mapping", node.start_mark
            )
        state = self.construct_mapping(node)
        value = state.get("int")
        if set(state) - {"int", "is_safe"} or type(value) is not int or not 0 <= value < 1 << 128:
            raise yaml.constructor.ConstructorError(
                None, None, f"not a UUID's state: {state!r}", node.start_mark
            )
        return uuid.UUID(int=value)


_UuidLoader.add_constructor(_UUID_TAG, _UuidLoader.construct_uuid)


def ENCODER(obj: Any) -> bytes:
    """Encode as kiwi_anyio's safe YAML codec does; values holding a ``uuid.UUID`` as
    ``yaml.dump`` does (see the module docstring)."""
    try:
        return YAML.encode(obj)
    except TypeError:
        data = yaml.dump(obj, Dumper=_UuidDumper, encoding="utf-8")
        assert isinstance(data, bytes)
        return data


def DECODER(data: bytes) -> Any:
    """Decode safely, as :data:`kiwi_anyio.codecs.YAML`, plus ``uuid.UUID``."""
    try:
        return YAML.decode(data)
    except UndecodableMessage:
        if b"python/object:uuid.UUID" not in data:
            raise
    try:
        return yaml.load(data, Loader=_UuidLoader)
    except Exception as exc:
        raise UndecodableMessage(f"cannot decode YAML message body: {exc}") from exc


def FULL_LOADER_DECODER(data: bytes) -> Any:
    """kiwiPy's decoder: ``yaml.load(data, Loader=yaml.FullLoader)``.

    **Unsafe**: it resolves ``!!python/name:`` tags (any importable function), so anyone who
    can publish to the broker chooses what gets built. Use it only on a trusted broker.
    """
    return yaml.load(data, Loader=yaml.FullLoader)


def KIWIPY_ENCODER(obj: Any) -> bytes:
    """kiwiPy's encoder: ``yaml.dump(obj, encoding='utf-8')`` (any object)."""
    data = yaml.dump(obj, encoding="utf-8")
    assert isinstance(data, bytes)
    return data


#: the compat layer's default codec: kiwiPy's wire YAML, decoded safely, with uuid.UUID
SAFE_CODEC: Final = Codec(YAML.content_type, ENCODER, DECODER)
#: kiwiPy's own codec (``yaml.dump`` / ``FullLoader``): unsafe, an explicit choice
FULL_LOADER_CODEC: Final = Codec(
    YAML.content_type, KIWIPY_ENCODER, FULL_LOADER_DECODER, unsafe=True
)

#: set by ``kiwi_anyio.compat.kiwipy.install(full_loader=True)``
use_full_loader = False


def codec_for(encoder: Any = None, decoder: Any = None) -> Codec | None:
    """The codec of a compat communicator given kiwiPy's ``encoder``/``decoder`` arguments:
    ``None`` (kiwi_anyio wraps the functions) when either is given, else the default
    (:data:`SAFE_CODEC`, or :data:`FULL_LOADER_CODEC` after ``install(full_loader=True)``)."""
    if encoder is not None or decoder is not None:
        return None
    return FULL_LOADER_CODEC if use_full_loader else SAFE_CODEC
