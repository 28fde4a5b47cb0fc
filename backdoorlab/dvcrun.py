"""DVC with a cheaper dvc.lock rewrite: `python -m backdoorlab.dvcrun <dvc arguments>` is `dvc <dvc arguments>`.

The warm-start worker runs every `dvc ...` command it is given this way (`make demo`).

DVC rewrites the whole dvc.lock after every stage it runs. First it parses the file with
ruamel.yaml's pure-Python round trip, which keeps comments and quoting styles. Then it writes
every stage's entry again with ruamel's pure-Python writer. The demo's lock is 250 kB, mostly
the stages' code deps. On a 2-core Zen 4 that is 0.9 s to parse and 0.55 s to write, after
each of 72 stages.

Here dvc.lock is read with the safe loader, ruamel's C parser, which is how DVC reads the file
everywhere else. That is enough because a lock file has no comments, and its styles are the
ones DVC's writer picks for plain values anyway. The writer is still DVC's own. It writes each
stage's entry on its own, as the text it takes inside the whole file, and keeps that text for
as long as the entry does not change. So a rewrite serializes only the stage that just ran.
The bytes are DVC's: tests/test_dvcrun.py compares both ways on values whose YAML style is
easy to get wrong, and on the committed lock files. Every file other than dvc.lock keeps
DVC's round trip.

DVC also reads the same dvc.lock again for every stage it considers (0.2 s with the C parser).
Safe-loader results are kept by the text they came from, and each reader gets its own copy.
A lock just written is kept too, as the data it was written from, so the next read of it
parses nothing; only data made of the types the safe loader gives back (dict, list, str,
int, float, bool, None) is kept that way, and tests check it equals what parsing the text
gives. `dvc exp run` also loads dvc.yaml and dvc.lock again each time it rebuilds its index
(about 80 times for a 12-stage experiment) and checks each against DVC's schema (46 ms for the
demo's lock on a Zen 4); a text that passed that check against the same schema passes it again,
so it is checked once. With a DVC whose internals differ, nothing is patched: plain DVC runs.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
from collections import OrderedDict
from io import StringIO


def _shares_objects(data) -> bool:
    """Whether a dict or list appears twice in `data`: YAML would write an anchor, which no part alone can."""
    seen: set[int] = set()
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, (dict, list)):
            if id(node) in seen:
                return True
            seen.add(id(node))
            stack.extend(node.values() if isinstance(node, dict) else node)
    return False


LOADED_SCALARS = (str, int, float, bool, type(None))  # what the safe loader makes of a YAML scalar


def as_loaded(data):
    """`data` as the safe loader would give it back: plain dicts (string keys, order kept), lists and
    scalars of exactly LOADED_SCALARS' types. Raises TypeError for anything else (a tuple, a str subclass)."""
    if type(data) in LOADED_SCALARS:
        return data
    if isinstance(data, dict) and all(type(k) is str for k in data):
        return {k: as_loaded(v) for k, v in data.items()}
    if type(data) is list:
        return [as_loaded(v) for v in data]
    raise TypeError(f"{type(data).__name__} is not what the safe loader returns")


class RememberingParser:
    """DVC's `parse(text, path, typ)`, with the last `keep` safe-loader results kept by their text.

    Each call gets a copy of its own (DVC changes what it reads before writing it back).
    `remember(text, data)` keeps what a writer just wrote, so that reading it back parses nothing."""

    def __init__(self, parse, keep: int = 4):
        self.parse, self.keep = parse, keep
        self.results: OrderedDict[bytes, bytes] = OrderedDict()

    def _keep(self, key: bytes, data) -> None:
        self.results[key] = pickle.dumps(data)
        while len(self.results) > self.keep:
            self.results.popitem(last=False)

    def __call__(self, text, path, typ="safe"):
        if typ != "safe":
            return self.parse(text, path, typ=typ)
        key = hashlib.sha256(text.encode()).digest()
        if key not in self.results:
            self._keep(key, self.parse(text, path, typ=typ))
        self.results.move_to_end(key)
        return pickle.loads(self.results[key])

    def remember(self, text: str, data) -> None:
        try:
            loaded = as_loaded(data) or {}  # DVC's parser gives {} for an empty document
        except (TypeError, RecursionError):
            return  # read back by parsing, as usual
        key = hashlib.sha256(text.encode()).digest()
        self.results.pop(key, None)
        self._keep(key, loaded)


def remembering_validator(validate):
    """DVC's `validate(data, schema, text, path, rev)` that checks a text against a schema once.

    DVC's loader calls it with the text the data came from and ignores what it returns; a text
    that passed against a schema passes again. Calls without a text (which use the result) and
    failures go through every time."""
    passed: set[tuple[bytes, int, type]] = set()
    schemas: dict[int, object] = {}  # held, so that no other schema can take a remembered id

    def checked(data, schema, text=None, path=None, rev=None):
        if text is None:
            return validate(data, schema, text=text, path=path, rev=rev)
        key = (hashlib.sha256(text.encode()).digest(), id(schema), type(data))
        if key in passed:
            return data
        result = validate(data, schema, text=text, path=path, rev=rev)
        schemas[id(schema)] = schema
        passed.add(key)
        return result

    return checked


def entry_writer(dump):
    """DVC's writer `dump(data, stream)` for a whole lock file, serializing each stage's entry once.

    A stage's text is what `dump` makes of {"stages": {name: entry}}, less its first line: the
    same indentation and line folding as inside the whole file."""
    texts: dict[tuple[str, str], str] = {}

    def stage_text(name: str, entry) -> str:
        key = (name, repr(entry))
        if key not in texts:
            out = StringIO()
            dump({"stages": {name: entry}}, out)
            texts[key] = out.getvalue().split("\n", 1)[1]
        return texts[key]

    def write(data, stream) -> None:
        stages = data.get("stages") if isinstance(data, dict) else None
        if not stages or not isinstance(stages, dict) or _shares_objects(data):
            dump(data, stream)
            return
        for key, value in data.items():
            if key == "stages":
                stream.write("stages:\n" + "".join(stage_text(name, entry) for name, entry in stages.items()))
            else:
                out = StringIO()
                dump({key: value}, out)
                stream.write(out.getvalue())

    return write


def fast_lockfile_rewrites() -> bool:
    """Patch DVC as the module's notes say; False (nothing changed) where its internals are not as expected."""
    try:
        from dvc import dvcfile
        from dvc.utils import strictyaml
        from dvc.utils.serialize import _common, _yaml
    except ImportError:
        return False
    if not all(hasattr(m, n) for m, n in ((dvcfile, "modify_yaml"), (_common, "_modify_data"), (_yaml, "parse_yaml"),
                                           (_yaml, "_dump"), (strictyaml, "parse_yaml"), (strictyaml, "validate"))):
        return False
    round_trip = dvcfile.modify_yaml
    parse = RememberingParser(_yaml.parse_yaml)
    write = entry_writer(_yaml._dump)

    def write_and_remember(data, stream) -> None:
        out = StringIO()
        write(data, out)
        stream.write(out.getvalue())
        parse.remember(out.getvalue(), data)

    def modify_yaml(path, fs=None):
        if os.path.basename(os.fspath(path)) != "dvc.lock":
            return round_trip(path, fs=fs)
        return _common._modify_data(path, parse, write_and_remember, fs=fs)

    dvcfile.modify_yaml = modify_yaml
    strictyaml.parse_yaml = parse  # how DVC reads dvc.yaml and dvc.lock to build its pipeline
    strictyaml.validate = remembering_validator(strictyaml.validate)
    return True


def main() -> None:
    fast_lockfile_rewrites()
    from dvc.cli import main as dvc_main

    sys.exit(dvc_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
