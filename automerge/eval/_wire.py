"""The values that cross the sandbox wall: arguments into a sandboxed function, results out of it.

Exact builtin types only (``type(x) is int``, not a subclass), tagged JSON on one line. A result
is data, never an object of the program's: a program cannot hand the test driver a value whose
``__eq__`` always says yes. This file is also sent, as source, into the sandbox (``_sandbox.py``),
so it imports nothing beyond the standard library's ``json``.
"""

import json

MAX_DEPTH = 100


def encode(x, depth=0):
    """A JSON-able form of ``x``; TypeError for a type that may not cross, ValueError when nested too deep."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested more than %d levels deep" % MAX_DEPTH)
    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is float:
        return {"f": repr(x)}
    if t is list:
        return [encode(v, depth + 1) for v in x]
    if t is tuple:
        return {"t": [encode(v, depth + 1) for v in x]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "fs": [encode(v, depth + 1) for v in x]}
    if t is bytes:
        return {"b": x.hex()}
    if t is complex:
        return {"c": [repr(x.real), repr(x.imag)]}
    raise TypeError("a value of type %s cannot leave the sandbox (plain data only)" % t.__name__)


def decode(o, depth=0):
    """The value ``encode`` wrote; ValueError for anything else (a program may send garbage)."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested more than %d levels deep" % MAX_DEPTH)
    t = type(o)
    if o is None or t is bool or t is int or t is str:
        return o
    if t is list:
        return [decode(v, depth + 1) for v in o]
    if t is dict and len(o) == 1:
        (tag, v), = o.items()
        if tag == "f" and type(v) is str:
            return float(v)
        if tag == "t" and type(v) is list:
            return tuple(decode(e, depth + 1) for e in v)
        if tag == "d" and type(v) is list and all(type(p) is list and len(p) == 2 for p in v):
            return {decode(k, depth + 1): decode(e, depth + 1) for k, e in v}
        if tag in ("s", "fs") and type(v) is list:
            items = [decode(e, depth + 1) for e in v]
            return set(items) if tag == "s" else frozenset(items)
        if tag == "b" and type(v) is str:
            return bytes.fromhex(v)
        if tag == "c" and type(v) is list and len(v) == 2 and all(type(e) is str for e in v):
            return complex(float(v[0]), float(v[1]))
    raise ValueError("not a sandbox value: %.80r" % (o,))


def dumps(x):
    return json.dumps(encode(x), separators=(",", ":"))


def loads(line):
    return decode(json.loads(line))
