"""Notebook parameters are data: read them safely, check them all at once, hand them over as literals.

An instructor's `params.yaml` maps notebooks to parameter values. Before any kernel starts:

- the file is at most `MAX_BYTES` of UTF-8 text (a BOM is fine);
- YAML is parsed event by event and refused on any anchor or alias (no alias bombs), any explicit
  tag (`!!binary`, `!!python/object`, `!!set`, ...), or nesting deeper than `MAX_DEPTH`;
- what it builds may hold only str, int, float, bool, None, lists and mappings with string keys
  (a date such as `2024-01-01` is refused: quote it to pass text); a key given twice is refused;
- every value is turned into Python source by papermill's own translator and read back with
  `ast.literal_eval`; it must come back equal, so the injected cell holds literals and nothing else.

Problems are collected, not raised one at a time: `ParamsError.problems` lists every one, with
"did you mean" for a near-miss notebook or parameter name.
"""

from __future__ import annotations

import ast
import difflib
import math
from pathlib import Path

from course_lib.core.paths import display_path

MAX_BYTES = 64 * 1024
MAX_DEPTH = 16
PLAIN = (str, int, float, bool, type(None))


class ParamsError(ValueError):
    """Every problem found in a parameters file or command line, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def did_you_mean(name: str, known: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_text_file(path: Path, limit: int = MAX_BYTES) -> str:
    """A UTF-8 text file (BOM stripped) of at most `limit` bytes; ValueError naming the fix otherwise."""
    size = path.stat().st_size
    if size > limit:
        raise ValueError(f"{display_path(path)} is {size:,} bytes; a parameters file may have at most {limit:,} "
                         "(parameters are a few names and values)")
    data = path.read_bytes()[: limit + 1]
    if b"\0" in data:
        raise ValueError(f"{display_path(path)} looks binary (it contains NUL bytes); pass a UTF-8 YAML text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{display_path(path)} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         "save it as UTF-8 and run again") from None


def load_yaml(text: str, source: str = "the parameters file") -> object:
    """Plain data from YAML text; ParamsError (one line per problem, all of them) on anything else."""
    data, problems = read_yaml(text, source)
    if problems:
        raise ParamsError(problems)
    return data


def read_yaml(text: str, source: str = "the parameters file") -> tuple[object, list[str]]:
    """(plain data, problems): every refused value is reported with its line and left out of the data.

    Nothing is constructed from a tag: the text is composed into nodes (no object is built), each
    node's resolved tag must be one of the plain ones, and only then are scalars read, by PyYAML's
    safe constructor. An alias (a node met twice) is refused, so nothing can be expanded.
    """
    import yaml

    if len(text.encode("utf-8")) > MAX_BYTES:
        raise ParamsError([f"{source} is over {MAX_BYTES:,} bytes; a parameters file is a few names and values"])
    problems: list[str] = []
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):  # first pass: cheap, no recursion
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ParamsError([f"{source}, line {event.start_mark.line + 1}: nested deeper than {MAX_DEPTH} "
                                       "levels; parameters are flat values"])
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            if isinstance(event, yaml.AliasEvent):
                problems.append(f"{source}, line {event.start_mark.line + 1}: alias *{event.anchor} refused; "
                                "write the value out in full (no anchors or aliases)")
            elif getattr(event, "anchor", None) is not None:
                problems.append(f"{source}, line {event.start_mark.line + 1}: anchor &{event.anchor} refused; "
                                "write every value out in full (no anchors or aliases)")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ParamsError([f"{source} is not valid YAML: {' '.join(str(exc).split())}"]) from None
    if node is None:
        return None, problems
    constructor = yaml.SafeLoader("")
    seen: set[int] = set()

    def where(n) -> str:
        return f"{source}, line {n.start_mark.line + 1}"

    def build(n):
        if id(n) in seen:
            return _REFUSED  # an alias: already reported by the event pass
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode) and n.tag == _MAP:
            out = {}
            for key_node, value_node in n.value:
                key = build(key_node)
                if key is _REFUSED:
                    continue
                if isinstance(key, (list, dict, float)) or key is None or isinstance(key, bool):
                    problems.append(f"{where(key_node)}: key {key!r} refused; a key must be a name")
                    continue
                if key in out:
                    problems.append(f"{where(key_node)}: key {key!r} is given twice; keep one")
                    continue
                value = build(value_node)
                if value is not _REFUSED:
                    out[key] = value
            return out
        if isinstance(n, yaml.SequenceNode) and n.tag == _SEQ:
            items = [build(item) for item in n.value]
            return [i for i in items if i is not _REFUSED]
        if isinstance(n, yaml.ScalarNode) and n.tag in _SCALARS:
            return constructor.construct_object(n, deep=True)
        hint = " (quote it to pass it as text)" if n.tag.endswith(":timestamp") else ""
        shown = f" {n.value!r}" if isinstance(n, yaml.ScalarNode) else ""
        problems.append(f"{where(n)}: {n.tag.removeprefix(_YAML)}{shown} refused{hint}; only text, "
                        "numbers, true/false, null, lists and mappings are allowed")
        return _REFUSED

    return build(node), problems


_REFUSED = object()
_YAML = "tag:yaml.org,2002:"
_MAP, _SEQ = _YAML + "map", _YAML + "seq"
_SCALARS = {_YAML + t for t in ("str", "int", "float", "bool", "null")}


def plain_data_problems(value: object, where: str = ""):
    """Yield 'where: why' for each value that is not plain data (str/int/float/bool/None, list, str-keyed dict)."""
    if isinstance(value, PLAIN):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from plain_data_problems(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                yield f"{where or 'top level'}: key {key!r} must be a name (text), got {type(key).__name__}"
                continue
            yield from plain_data_problems(item, f"{where}.{key}" if where else str(key))
        return
    kind = type(value).__name__
    hint = " (quote it to pass it as text)" if kind in ("date", "datetime") else ""
    yield (f"{where or 'top level'}: {kind} value {str(value)[:60]!r} refused{hint}; only text, numbers, true/false, "
           "null, lists and mappings are allowed")


def as_literal(value: object) -> str:
    """The Python source papermill will inject for `value`, checked to read back as a literal equal to it."""
    from papermill.translators import PythonTranslator

    problems = list(plain_data_problems(value, "value"))
    if problems:
        raise ParamsError(problems)
    source = PythonTranslator.translate(value)
    try:
        back = _literal(ast.parse(source, mode="eval").body)
    except (ValueError, SyntaxError):
        back = _NOT_EQUAL
    if not _same(back, value):
        raise ParamsError([f"value: {value!r} does not survive as a Python literal ({source[:80]!r}); use text keys"])
    return source


_NOT_EQUAL = object()
_FLOAT_WORDS = ("nan", "inf", "-inf")


def _literal(node: ast.AST) -> object:
    """ast.literal_eval plus exactly float('nan'), float('inf'), float('-inf') (papermill's spelling)."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float" and not node.keywords
            and len(node.args) == 1 and isinstance(node.args[0], ast.Constant) and node.args[0].value in _FLOAT_WORDS):
        return float(node.args[0].value)
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("dict unpacking is not a literal")
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}
    return ast.literal_eval(node)


def _same(a: object, b: object) -> bool:
    """Equal in value and type, NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(b, dict):
        return len(a) == len(b) and all(k in a and _same(a[k], b[k]) for k in b)
    return a == b


def check_values(params: dict, where: str) -> list[str]:
    """One line per parameter whose value cannot reach the notebook as a plain literal."""
    problems = []
    for name, value in params.items():
        try:
            as_literal(value)
        except ParamsError as exc:
            problems += [f"{where}: {p.replace('value', name, 1)}" for p in exc.problems]
    return problems
