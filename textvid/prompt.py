"""The writer's prompt as data: a template (the user message, text with `$name` placeholders) and the JSON
schema of one answer, two files a user copies and edits (`--template`, `--schema`; the defaults are
`textvid/prompts/tideo.txt` and `tideo.schema.json`, shown in docs/textvid.md).

    prompt = Prompt.load(template_path, schema_path, Shape(frames=(5, 15), objects=(1, 3), qas=(4, 6)))
    prompt.render(caption, domain) -> the user message
    prompt.schema                  -> the schema with the counts of `Shape` set (what the writer must follow)

The counts live in the flags (`Shape`): the writer sets `minItems`/`maxItems` of `frames`, of each frame's
`objects`, of `QAs` and (to 5) of each QA's `options` in the schema, and fills the template's `$min_frames`
.. `$max_qas`, so a prompt, its schema and the checks never disagree. A template or schema that cannot be
used is a one-line `ConfigError` naming the file (and line), before any model is loaded.
"""
import hashlib
import json
import string
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from util.errors import ConfigError, MissingFileError

from .config import N_OPTIONS, Shape

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
DEFAULT_TEMPLATE = PROMPT_DIR / "tideo.txt"
DEFAULT_SCHEMA = PROMPT_DIR / "tideo.schema.json"
PLACEHOLDERS = {
    "caption": "the seed caption", "domain": "the seed's domain (or --domain)",
    "min_frames": "--frames", "max_frames": "--frames", "min_objects": "--objects", "max_objects": "--objects",
    "min_qas": "--qas", "max_qas": "--qas", "n_options": "5", "schema": "the JSON schema (--schema)",
}
# where the writer sets the counts: (path of keys in the schema, the Shape field; None: N_OPTIONS)
COUNTED = ((("properties", "frames"), "frames"),
           (("properties", "frames", "items", "properties", "objects"), "objects"),
           (("properties", "QAs"), "qas"),
           (("properties", "QAs", "items", "properties", "options"), None))


def read_text_file(path, flag: str) -> str:
    """The UTF-8 text of the file a flag names (`dataloader.base.read_text`: a bad byte is named by line)."""
    from dataloader.base import read_text
    if not Path(path).is_file():
        raise MissingFileError(f"{flag} {path}: no such file")
    return read_text(path)


def load_template(path) -> string.Template:
    """A `string.Template` whose placeholders are all known and which uses `$caption`."""
    text = read_text_file(path, "--template")
    tpl = string.Template(text)
    for m in tpl.pattern.finditer(text):
        if m.group("invalid") is not None:
            at = m.start("invalid")
            line = text.count("\n", 0, at) + 1
            raise ConfigError(f"{path}: line {line}: '$' must start a placeholder such as $caption "
                              f"(write $$ for a dollar sign)")
        name = m.group("named") or m.group("braced")
        if name is not None and name not in PLACEHOLDERS:
            line = text.count("\n", 0, m.start()) + 1
            raise ConfigError(f"{path}: line {line}: unknown placeholder ${name} "
                              f"(known: {', '.join('$' + k for k in PLACEHOLDERS)})")
    if "caption" not in tpl.get_identifiers():
        raise ConfigError(f"{path}: the template never uses $caption (where the seed caption goes)")
    return tpl


def _at(schema: dict, keys, path) -> dict:
    node = schema
    for depth, key in enumerate(keys):
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: no object at {'.'.join(keys[:depth + 1])} (the answer's shape is fixed: "
                              "frames[].caption/objects, QAs[].question/options/answer/answer_open_ended, "
                              "global_video_caption; see docs/textvid.md)")
    return node


def load_schema(path, shape: Shape) -> dict:
    """The JSON schema of `path` with the counts of `shape` set (see the module docstring)."""
    text = read_text_file(path, "--schema")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno} column {e.colno}: not JSON ({e.msg})") from None
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise ConfigError(f'{path}: a JSON schema of an object ("type": "object") is expected')
    schema = deepcopy(schema)
    for keys, name in COUNTED:
        node = _at(schema, keys, path)
        if node.get("type") != "array":
            raise ConfigError(f'{path}: {".".join(keys)} must be "type": "array"')
        node["minItems"], node["maxItems"] = shape.counts(name)
    return schema


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Prompt:
    template: string.Template
    schema: dict
    shape: Shape
    template_path: str
    schema_path: str

    @classmethod
    def load(cls, template_path=None, schema_path=None, shape: Shape = Shape()) -> "Prompt":
        template_path = template_path or DEFAULT_TEMPLATE
        schema_path = schema_path or DEFAULT_SCHEMA
        return cls(load_template(template_path), load_schema(schema_path, shape), shape, str(template_path),
                   str(schema_path))

    def render(self, caption: str, domain: str) -> str:
        s = self.shape
        values: Dict[str, object] = dict(
            caption=caption, domain=domain, min_frames=s.frames[0], max_frames=s.frames[1],
            min_objects=s.objects[0], max_objects=s.objects[1], min_qas=s.qas[0], max_qas=s.qas[1],
            n_options=N_OPTIONS, schema=json.dumps(self.schema, indent=1))
        return self.template.substitute(values)

    def digests(self) -> Dict[str, str]:
        """What the prompt is, for the run's settings record: the template text and the schema with counts."""
        return {"template": digest(self.template.template), "schema": digest(json.dumps(self.schema, sort_keys=True))}
