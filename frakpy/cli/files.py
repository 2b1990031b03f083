"""Pod and container config files in crictl's JSON/YAML form, parsed strictly into CRI messages."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from frakpy.cli.errors import CLIError

M = TypeVar("M", bound=Message)


def read_mapping(path: str) -> dict[str, Any]:
    """Load a JSON or YAML file (by extension; YAML is tried for anything not ending in .json)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise CLIError(f"{path}: {exc.strerror or exc}") from exc
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (ValueError, ImportError) as exc:
        raise CLIError(f"{path}: not valid JSON/YAML: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError without importing yaml eagerly
        raise CLIError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CLIError(f"{path}: expected a mapping at the top level")
    return data


def _text_to_bytes(data: Any, desc: Descriptor) -> Any:
    """Let ``bytes`` fields take plain text, as crictl users write them (JSON mapping wants base64).

    Our CRI proto follows the reference in declaring ``KeyValue.value`` (env values) as bytes.
    """
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key, value in data.items():
        fd = desc.fields_by_name.get(key) or next((f for f in desc.fields if f.json_name == key), None)
        if fd is None:
            continue  # ParseDict reports it
        conv: Callable[[Any], Any]
        if fd.type == FieldDescriptor.TYPE_BYTES:
            conv = _b64_text
        elif fd.message_type is not None and not fd.message_type.GetOptions().map_entry:
            conv = functools.partial(_text_to_bytes, desc=fd.message_type)
        else:
            continue
        out[key] = [conv(v) for v in value] if isinstance(value, list) else conv(value)
    return out


def _b64_text(value: Any) -> Any:
    return base64.b64encode(value.encode()).decode() if isinstance(value, str) else value


def load_message(path: str, message: M) -> M:
    """Fill ``message`` from the file; unknown keys and wrong types are errors naming the file."""
    data = _text_to_bytes(read_mapping(path), message.DESCRIPTOR)
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise CLIError(f"{path}: {exc}") from exc
    return message
