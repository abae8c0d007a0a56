#!/usr/bin/env python3
"""Attack run for symbn (issue 17): try symbn as an attacker and as a careless user would.

    python tests/attack.py [--json OUT.json] [--only AREA,...] [--list] [-v]

Runs against whichever symbn ``import symbn`` finds (``PYTHONPATH=/tmp/before`` for another tree) and that tree's
``generated/`` modules. Every attempt gets exactly one class:

    clear_error  a documented exception (SpecError, ExpressionError, GraphError, TypeError, ValueError, KeyError,
                 OSError/OverwriteError for files) whose message names the problem; for the CLI a non-zero exit with a
                 ``symbn: error: ...`` line and no traceback; every array and file unchanged
    correct      the call succeeded and the result agrees with an independent float64 NumPy reference (or the
                 expected file, mode, exit status)
    traceback    any other exception, an unclear message, or a Python traceback from the CLI
    wrong        succeeded with a wrong result, or refused after changing an argument, file or state
    hang         ran past its timeout (attempts run in a worker process or a subprocess that is killed)
    security     user text executed or escaping its context (marker files, docstring break-outs, raw HTML/TeX,
                 poisoned caches, untrusted files imported by ``symbn check``)

This is a standalone script, not a pytest module (nothing here is named ``test_*``).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tokenize
from dataclasses import dataclass

CLASSES = ("clear_error", "correct", "traceback", "wrong", "hang", "security")
AREAS = ("parser", "specs", "kernels", "files", "layers")
RESULT = "@@ATTACK-RESULT@@"


# ----------------------------------------------------------------------------------------------------------------
# context shared by the parent and the worker (through the environment)

def env(name: str) -> str:
    return os.environ[f"ATTACK_{name}"]


def marker(k: int) -> str:
    return f"/tmp/symbn_attack_marker_{env('TAG')}_{k}"


def payload(k: int) -> str:
    """Python code that, if it ever runs, creates the attempt's marker file."""
    return f"__import__('pathlib').Path('{marker(k)}').touch()"


def fired(k: int) -> bool:
    return os.path.exists(marker(k))


def clear_marker(k: int) -> None:
    try:
        os.unlink(marker(k))
    except FileNotFoundError:
        pass


def one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scratch(name: str) -> str:
    """A fresh directory under this run's temporary root."""
    path = tempfile.mkdtemp(prefix=f"{name}_", dir=env("RUN"))
    return path


# ----------------------------------------------------------------------------------------------------------------
# classification helpers (worker side: they import symbn)

_DOC = None


def documented():
    global _DOC
    if _DOC is None:
        import symbn
        # OSError: files and folders (unwritable cache, a folder where a file goes), with the path in the message
        _DOC = (symbn.SpecError, symbn.ExpressionError, symbn.GraphError, TypeError, ValueError, KeyError,
                OSError)
    return _DOC


def exc_class(e: BaseException, keys=()) -> tuple[str, str]:
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, documented()):
        low = str(e).lower()
        if not keys or any(k.lower() in low for k in keys):
            return "clear_error", one_line(text)
        return "traceback", "message does not name the problem: " + one_line(text)
    return "traceback", one_line(text)


def same(a, b) -> bool:
    import numpy as np
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def relerr(a, b) -> float:
    """Relative error of a against the reference b; inf when NaN/inf positions disagree."""
    import numpy as np
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        try:
            a = np.broadcast_to(a, b.shape)
        except ValueError:
            return math.inf
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb):
        return math.inf
    diff = np.linalg.norm((a - b)[fb])
    scale = np.linalg.norm(b[fb])
    if scale == 0:
        return float(diff)
    return float(diff / scale)


class Refusal:
    """Run a call that may be refused; remember which arrays must stay unchanged."""

    def __init__(self, keys=(), **arrays):
        import numpy as np
        self.keys = keys
        self.arrays = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
        self.copies = {k: v.copy() for k, v in self.arrays.items()}

    def changed(self) -> list[str]:
        return [k for k, v in self.arrays.items() if not same(v, self.copies[k])]

    def run(self, fn):
        """(None, result) when the call succeeded, else (class, detail)."""
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - classifying is the point
            changed = self.changed()
            if changed:
                return ("wrong", f"refused ({one_line(type(e).__name__ + ': ' + str(e), 90)}) but changed "
                                 f"{', '.join(changed)}"), None
            return exc_class(e, self.keys), None
        return None, result


def expect_refusal(fn, keys, arrays=None, accepted_detail="accepted"):
    verdict, result = Refusal(keys, **(arrays or {})).run(fn)
    if verdict is not None:
        return verdict
    return "wrong", f"{accepted_detail}: {one_line(repr(result), 80)}"


# ----------------------------------------------------------------------------------------------------------------
# CLI and subprocess helpers (parent side)

class Hang(Exception):
    pass


def child_env(extra=None) -> dict:
    e = dict(os.environ)
    tree = env("TREE")
    e["PYTHONPATH"] = tree + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    e["SYMBN_CACHE"] = os.path.join(env("RUN"), "cli_cache")
    e["NUMBA_CACHE_DIR"] = os.path.join(env("RUN"), "numba_cli")
    e["XDG_CACHE_HOME"] = os.path.join(env("RUN"), "xdg")
    e["PYTHONWARNINGS"] = "ignore"
    for k, v in (extra or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def run_proc(cmd, cwd, extra=None, timeout=60.0, umask=0o022):
    p = subprocess.Popen(cmd, cwd=cwd, env=child_env(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, start_new_session=True, umask=umask)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        raise Hang(f"no exit after {timeout:g}s") from None
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def cli(args, cwd=None, extra=None, timeout=60.0, umask=0o022):
    return run_proc([sys.executable, "-m", "symbn.cli", *args], cwd or scratch("cwd"), extra, timeout, umask)


def pyrun(code, cwd=None, extra=None, timeout=60.0, umask=0o022):
    return run_proc([sys.executable, "-c", code], cwd or scratch("cwd"), extra, timeout, umask)


def error_line(err: str):
    for line in err.splitlines():
        if re.match(r"symbn(?: [\w-]+)?: error: ", line):
            return line
    return None


def cli_verdict(rc, out, err, keys=()):
    """Class for a CLI run that should be refused, or None when it exited 0."""
    if "Traceback (most recent call last)" in err:
        return "traceback", "traceback: " + one_line(err.strip().splitlines()[-1])
    if rc == 0:
        return None
    line = error_line(err)
    if line is None:
        return "traceback", f"exit {rc} without a 'symbn: error:' line: {one_line(err.strip()[-150:])}"
    if keys and not any(k.lower() in line.lower() for k in keys):
        return "traceback", "message does not name the problem: " + one_line(line)
    return "clear_error", one_line(line)


def leftovers(*dirs) -> list[str]:
    found = []
    for d in dirs:
        if os.path.isdir(d):
            for root, _, files in os.walk(d):
                found += [os.path.join(root, f) for f in files if f.endswith(".tmp")]
    return found


def immutable(path: str, on: bool) -> None:
    """A directory nobody (root included) may write into: chattr +i as root, mode 0555 otherwise."""
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i" if on else "-i", path], check=False, capture_output=True)
    else:
        os.chmod(path, 0o555 if on else 0o755)


def can_write(path: str) -> bool:
    probe = os.path.join(path, ".attack_probe")
    try:
        with open(probe, "w"):
            pass
        os.unlink(probe)
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------------------------
# independent float64 references

def ref_eval(text: str, x, params: dict, eps: float, axis):
    """Evaluate a forward expression with NumPy, from Python's own syntax tree (not symbn's)."""
    import numpy as np
    tree = ast.parse(text.strip(), mode="eval").body
    names = {"x": x, "eps": eps, **params}
    funcs = {"sqrt": np.sqrt, "exp": np.exp, "log": np.log, "abs": np.abs,
             "mean": lambda a: np.mean(np.broadcast_to(a, x.shape), axis=axis, keepdims=True),
             "sum": lambda a: np.sum(np.broadcast_to(a, x.shape), axis=axis, keepdims=True)}

    def ev(n):
        if isinstance(n, ast.BinOp):
            a, b = ev(n.left), ev(n.right)
            op = type(n.op)
            if op is ast.Add:
                return a + b
            if op is ast.Sub:
                return a - b
            if op is ast.Mult:
                return a * b
            if op is ast.Div:
                return np.divide(np.float64(1.0) * a, b)
            if op is ast.Pow:
                return np.power(np.float64(1.0) * a, b)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.UAdd):
            return ev(n.operand)
        if isinstance(n, ast.Name):
            return names[n.id]
        if isinstance(n, ast.Constant) and type(n.value) in (int, float):
            return np.float64(n.value) if abs(n.value) < 1e300 or isinstance(n.value, float) else float(n.value)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and len(n.args) == 1:
            return funcs[n.func.id](ev(n.args[0]))
        raise KeyError(f"reference cannot evaluate {ast.dump(n)[:60]}")

    with np.errstate(all="ignore"):
        return np.broadcast_to(ev(tree), x.shape).astype(np.float64)


KINDS = {
    "batch_nc": dict(shape=(16, 6), red=(0,), ch=1),
    "batch_nchw": dict(shape=(4, 6, 3, 5), red=(0, 2, 3), ch=1),
    "batch_nhwc": dict(shape=(4, 3, 5, 6), red=(0, 1, 2), ch=3),
    "layer_nc": dict(shape=(16, 6), red=(1,), ch=1),
    "rms_nc": dict(shape=(16, 6), red=(1,), ch=1, rms=True),
    "instance_nchw": dict(shape=(3, 4, 5, 6), red=(2, 3), ch=1),
    "group4_nchw": dict(shape=(3, 8, 3, 4), red=(1, 2, 3), ch=1, groups=4),
}


def kind_of(name: str) -> dict:
    return KINDS[name.rsplit("_", 1)[0]] if name.rsplit("_", 1)[0] in KINDS else KINDS[name]


def _grouped(kind, a):
    g = kind.get("groups")
    if g:
        n, c = a.shape[:2]
        v = a.reshape((n, g, c // g) + a.shape[2:])
        return v, tuple(range(2, v.ndim))
    return a, kind["red"]


def _bshape(kind, shape):
    b = [1] * len(shape)
    b[kind["ch"]] = shape[kind["ch"]]
    return tuple(b)


def stat_shape(kind, shape):
    if kind.get("groups"):
        return (shape[0], kind["groups"])
    return tuple(n for a, n in enumerate(shape) if a not in kind["red"])


def ref_forward(kind, x, gamma, beta=None, eps=1e-5, scale=1.0):
    """y, mu, var, istd (flat statistics) of the textbook formula in float64; *scale* divides x first (so that
    |x| ~ 1e200 stays representable) and the statistics are scaled back."""
    import numpy as np
    x = np.asarray(x, dtype=np.float64) / scale
    e = eps / scale / scale
    gb = np.asarray(gamma, np.float64).reshape(_bshape(kind, x.shape))
    bb = 0.0 if beta is None else np.asarray(beta, np.float64).reshape(_bshape(kind, x.shape))
    xr, ax = _grouped(kind, x)
    with np.errstate(all="ignore"):
        if kind.get("rms"):
            var = np.mean(xr * xr, axis=ax, keepdims=True)
            mu = np.zeros_like(var)
        else:
            mu = np.mean(xr, axis=ax, keepdims=True)
            var = np.mean((xr - mu) ** 2, axis=ax, keepdims=True)
        istd = 1.0 / np.sqrt(var + e)
        xhat = ((xr - mu) * istd).reshape(x.shape)
        y = gb * xhat + bb
    with np.errstate(all="ignore"):
        return dict(y=y, mu=mu.reshape(-1) * scale, var=var.reshape(-1) * np.float64(scale) * scale,
                    istd=istd.reshape(-1) / scale, xhat=xhat)


def ref_backward(kind, dy, x, gamma, eps=1e-5, scale=1.0):
    import numpy as np
    x = np.asarray(x, dtype=np.float64) / scale
    e = eps / scale / scale
    dy = np.asarray(dy, dtype=np.float64)
    g = dy * np.asarray(gamma, np.float64).reshape(_bshape(kind, x.shape))
    xr, ax = _grouped(kind, x)
    gr = g.reshape(xr.shape)
    with np.errstate(all="ignore"):
        if kind.get("rms"):
            r2 = np.mean(xr * xr, axis=ax, keepdims=True) + e
            istd = 1.0 / np.sqrt(r2)
            dx = istd * (gr - xr * np.mean(gr * xr, axis=ax, keepdims=True) / r2)
            xhat = xr * istd
        else:
            mu = np.mean(xr, axis=ax, keepdims=True)
            istd = 1.0 / np.sqrt(np.mean((xr - mu) ** 2, axis=ax, keepdims=True) + e)
            xhat = (xr - mu) * istd
            dx = istd * (gr - np.mean(gr, axis=ax, keepdims=True)
                         - xhat * np.mean(gr * xhat, axis=ax, keepdims=True))
        others = tuple(a for a in range(x.ndim) if a != kind["ch"])
        xhat = xhat.reshape(x.shape)
        return dict(dx=dx.reshape(x.shape) / scale, dgamma=np.sum(dy * xhat, axis=others),
                    dbeta=np.sum(dy, axis=others))


def ref_eval_forward(kind, x, gamma, beta, rmu, rvar, eps=1e-5):
    import numpy as np
    keep = tuple(1 if a in kind["red"] else n for a, n in enumerate(x.shape))
    gb = np.asarray(gamma, np.float64).reshape(_bshape(kind, x.shape))
    bb = 0.0 if beta is None else np.asarray(beta, np.float64).reshape(_bshape(kind, x.shape))
    with np.errstate(all="ignore"):
        if kind.get("rms"):
            return gb * np.asarray(x, np.float64) / np.sqrt(np.asarray(rvar, np.float64).reshape(keep) + eps)
        return gb * (np.asarray(x, np.float64) - np.asarray(rmu, np.float64).reshape(keep)) / np.sqrt(
            np.asarray(rvar, np.float64).reshape(keep) + eps) + bb


def ref_running(rmu, rvar, mu, var, m, momentum):
    import numpy as np
    return ((1 - momentum) * np.asarray(rmu, np.float64) + momentum * mu,
            (1 - momentum) * np.asarray(rvar, np.float64) + momentum * var * m / (m - 1))


# ----------------------------------------------------------------------------------------------------------------
# generated modules (worker side)

_MODS: dict = {}


def gen(name: str):
    """A module of the tree's generated/ folder, imported once per process."""
    if name not in _MODS:
        import importlib.util
        path = os.path.join(env("TREE"), "generated", name + ".py")
        spec = importlib.util.spec_from_file_location(f"attack_generated_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        _MODS[name] = mod
    return _MODS[name]


def has_beta(mod) -> bool:
    import inspect
    return "beta" in inspect.signature(mod.forward_train).parameters


def data(kind, dtype="float64", seed=0, shape=None, loc=0.0, scale=1.0):
    import numpy as np
    rng = np.random.default_rng(seed)
    shape = shape or kind["shape"]
    c = shape[kind["ch"]]
    x = (loc + scale * rng.normal(size=shape)).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    st = stat_shape(kind, shape)
    return dict(x=x, dy=dy, gamma=rng.uniform(0.5, 1.5, c), beta=rng.normal(size=c),
                rmu=rng.normal(size=st), rvar=rng.uniform(0.5, 2.0, st))


def params(mod, d):
    return (d["gamma"], d["beta"]) if has_beta(mod) else (d["gamma"],)


def running(mod, d):
    """The running statistics a module takes: none where its statistics are per sample (RUNNING is empty)."""
    if not mod.RUNNING:
        return ()
    return (d["rmu"], d["rvar"]) if has_beta(mod) else (d["rvar"],)


# ----------------------------------------------------------------------------------------------------------------
# module text inspection

SUSPECT_NAMES = {"__import__", "PWNED"}


def breakout(text: str) -> str | None:
    """Why the generated Python text shows user text out of its context, or None."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError) as e:
        return f"module does not tokenize ({one_line(e, 60)})"
    bad = sorted({t.string for t in toks if t.type == tokenize.NAME and t.string in SUSPECT_NAMES})
    if bad:
        return f"user code outside strings in the generated module: {', '.join(bad)}"
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        return f"generated module is not valid Python ({one_line(e, 60)})"
    before_import = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        before_import.append(node)
    if len(before_import) != 1 or not (isinstance(before_import[0], ast.Expr)
                                       and isinstance(before_import[0].value, ast.Constant)):
        return f"the module docstring was split: {len(before_import)} statements before the imports"
    return None


def md_outside_code(text: str) -> str:
    """Markdown text outside fenced code blocks and code spans (CommonMark backtick-run pairing)."""
    lines, fence = [], None
    for line in text.split("\n"):
        m = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if re.match(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$", line):
                fence = None
            continue
        lines.append(line)
    s = "\n".join(lines)
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append(s[i:i + 2])
            i += 2
            continue
        if s[i] == "`":
            j = i
            while j < len(s) and s[j] == "`":
                j += 1
            run = s[i:j]
            m = re.compile(r"(?<!`)" + run + r"(?!`)").search(s, j)
            if m:
                i = m.end()
                continue
            out.append(run)
            i = j
            continue
        out.append(s[i])
        i += 1
    return "".join(out)


def tex_outside_verbatim(text: str) -> str:
    return re.sub(r"\\begin\{verbatim\}.*?\\end\{verbatim\}", "", text, flags=re.S)


# ================================================================================================================
# attempts

@dataclass
class Attempt:
    area: str
    desc: str
    func: object
    where: str = "worker"  # worker: in the persistent worker process; local: the parent (it spawns subprocesses)
    timeout: float = 20.0
    idx: int = -1


class Builder:
    def __init__(self):
        self.items: list[Attempt] = []

    def add(self, area, desc, func, where="worker", timeout=20.0):
        a = Attempt(area, desc, func, where, timeout, len(self.items))
        self.items.append(a)
        return a

    @property
    def k(self) -> int:
        """The index the next attempt will get (used for its marker file)."""
        return len(self.items)


# ----------------------------------------------------------------------------------------------------------------
# parser / expressions

def uses(text: str, name: str) -> bool:
    try:
        return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(ast.parse(text.strip(), mode="eval")))
    except Exception:  # noqa: BLE001
        return bool(re.search(rf"\b{name}\b", text.split("#")[0]))


def fresh_cache(k) -> None:
    os.environ["SYMBN_CACHE"] = os.path.join(env("RUN"), "pcache", str(k))
    for key in [m for m in sys.modules if m.startswith("symbn_cache_")]:
        del sys.modules[key]


def numeric_check(expr: str, mod) -> tuple[str, str]:
    import inspect
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 2.0, (3, 5))
    dy = rng.normal(size=(3, 5))
    P = {"gamma": rng.uniform(0.5, 1.5, 5), "beta": rng.normal(size=5)}
    names = [p for p in ("gamma", "beta") if p in inspect.signature(mod.forward_train).parameters]
    try:
        y_ref = ref_eval(expr, x, P, mod.EPS, axis=1)
    except Exception as e:  # noqa: BLE001
        return "wrong", f"accepted an expression outside the grammar ({one_line(e, 60)})"
    if not np.all(np.isfinite(y_ref)):
        return "wrong", "accepted an expression with no finite value (reference gives inf/nan)"
    res = mod.forward_train(x, *[P[n] for n in names])
    y, saved = res[0], res[1:]
    e_y = relerr(y, y_ref)
    if not e_y <= 1e-8:
        return "wrong", f"forward y differs from the reference (relative error {e_y:.1e})"
    gam = [P["gamma"]] if "gamma" in inspect.signature(mod.backward).parameters else []
    grads = mod.backward(dy, x, *gam, *saved)

    def loss(xx):
        return float(np.sum(dy * ref_eval(expr, xx, P, mod.EPS, axis=1)))

    h, fd = 1e-6, np.zeros_like(x)
    for i in range(x.size):
        xp, xm = x.copy(), x.copy()
        xp.flat[i] += h
        xm.flat[i] -= h
        fd.flat[i] = (loss(xp) - loss(xm)) / (2 * h)
    e_dx = relerr(grads[0], fd)
    if not e_dx <= 1e-5 and not (np.linalg.norm(fd) < 1e-7 and np.abs(grads[0]).max() < 1e-7):
        return "wrong", f"backward dx differs from finite differences (relative error {e_dx:.1e})"
    return "correct", f"y {e_y:.0e}, dx {e_dx:.0e} against the reference"


def parse_attempt(k, expr, clean=None, keys=("expression",), numeric=True):
    def run():
        import symbn
        fresh_cache(k)
        clear_marker(k)
        pa = (1,) if uses(expr, "gamma") or uses(expr, "beta") else ()
        try:
            spec = symbn.make(expr, axes=(1,), param_axes=pa)
            symbn.derive(spec)
            mod = symbn.load(spec, backend="numpy")
        except Exception as e:  # noqa: BLE001
            if fired(k):
                return "security", "injected code ran before the refusal: " + one_line(e, 80)
            return exc_class(e, keys)
        if fired(k):
            return "security", "injected code ran on symbn.load (marker file created)"
        why = breakout(open(mod.__file__, encoding="utf-8", errors="replace").read())
        if why:
            return "security", why
        if clean is not None:
            spec2 = symbn.make(clean, axes=(1,), param_axes=pa)
            mod2 = symbn.load(spec2, backend="numpy")
            text2 = open(mod2.__file__, encoding="utf-8", errors="replace").read()
            if fired(k):
                return "security", "poisoned cache: the clean expression ran the injected code"
            forward = next((line for line in text2.splitlines()[:80] if line.lstrip().startswith("forward")), "")
            if marker(k) in text2 or "#" in forward:
                return "wrong", "stale cache: the clean expression was served the module of the commented text"
        if not numeric:
            return "correct", "derived, generated and imported"
        return numeric_check(expr, mod)
    return run


def cli_derive_attempt(k, expr, extra=(), keys=("expression", "axis", "axes", "ndim", "param"), prove=False, pa="none", timeout=40.0):
    def run():
        clear_marker(k)
        args = ["derive", expr, "--axes", "1", "--param-axes", pa, *extra] + (["--prove"] if prove else [])
        try:
            rc, out, err = cli(args, timeout=timeout)
        except Hang as h:
            return "hang", str(h)
        if fired(k):
            return "security", "injected code ran (marker file created)"
        v = cli_verdict(rc, out, err, keys)
        if v is not None:
            return v
        if re.search(r"\bzoo\b|\bnan\b|(?<![\w.])oo\b|\bI\b", out):
            return "wrong", "exit 0 with zoo/nan/oo/I in the derivation"
        if prove and "brute-force Jacobian exactly" not in out:
            return "wrong", "exit 0 without the proofs"
        if "dx" not in out:
            return "wrong", "exit 0 without a derivation"
        return "correct", "derivation printed" + (" and proved" if prove else "")
    return run


def doc_attempt(k, fmt, expr, probe):
    def run():
        clear_marker(k)
        try:
            rc, out, err = cli(["derive", expr, "--axes", "0", "--param-axes", "none", "--format", fmt], timeout=150)
        except Hang as h:
            return "hang", str(h)
        if fired(k):
            return "security", f"--format {fmt}: injected code ran (marker file created)"
        v = cli_verdict(rc, out, err, ("expression",))
        if v is not None and (v[0] == "traceback" or rc != 1 or not out.strip()):
            return v
        if fmt == "md" and re.search(r"(?<!\\)" + re.escape(probe), md_outside_code(out)):
            return "security", "Markdown: user text escapes its code span (raw HTML in the document)"
        if fmt == "html" and probe in out:
            return "security", "HTML: user text appears unescaped (raw element in the document)"
        if fmt == "tex" and probe in tex_outside_verbatim(out):
            return "security", "TeX: user text appears as raw TeX commands"
        if rc != 0:
            return "wrong", f"document written but exit {rc}"
        if "mean" not in out:
            return "wrong", "no derivation in the document"
        return "correct", f"{fmt} document with the user text escaped"
    return run


NORM = "(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps)"


def build_parser(b: Builder):
    A = "parser"
    base = "x - mean(x)"

    # comments, quotes, backslashes: the payload creates the attempt's marker file if it ever runs
    k = b.k
    b.add(A, "comment: plain '#' comment", parse_attempt(k, base + " # just a note", clean=base))
    payloads = [
        ('comment closes docstring with """ (and/or)', lambda k: f'{base} # """ and {payload(k)} or """'),
        ('comment closes docstring with """ (;stmt;)', lambda k: f'{base} # """;{payload(k)};"""'),
        ("comment with ''' (docstring uses double quotes)", lambda k: f"{base} # ''' and {payload(k)} or '''"),
        ('multi-line: second line comment closes docstring', lambda k: f'(x - mean(x) # first\n# """;{payload(k)};"""\n)'),
        ('lone """ in a comment', lambda k: f'{base} # """'),
        ('comment """ """ (split docstring)', lambda k: f'{base} # """ """'),
        ('comment with escaped quote \\"""', lambda k: f'{base} # \\"""{payload(k)}'),
        ('comment with two quotes ""', lambda k: f'{base} # "" {payload(k)}'),
        ("comment ending in a backslash", lambda k: f"{base} # trailing \\"),
        ("comment with \\N{BOGUS} escape", lambda k: f"{base} # \\N{{BOGUS}}"),
        ("comment with \\x4 escape", lambda k: f"{base} # \\x4"),
        ("comment with \\u12 escape", lambda k: f"{base} # \\u12"),
        ("comment with carriage return + code", lambda k: f"{base} # c\r{payload(k)}"),
        ("comment with form feed", lambda k: f"{base} # c\x0cd"),
        ("comment with U+2028 + code", lambda k: f"{base} # c\u2028{payload(k)}"),
        ("comment with NEL U+0085", lambda k: f"{base} # c\x85d"),
        ("comment with RTL override (trojan source)", lambda k: f"{base} # \u202e }}; {payload(k)} \u2066"),
        ("comment with lone surrogate", lambda k: f"{base} # \ud800"),
        ("comment with unicode text and emoji", lambda k: f"{base} # ünïcödé ✓ 漢字 \U0001F600"),
        ("comment with Jinja syntax", lambda k: f"{base} # {{{{ 7*7 }}}} {{% raw %}}"),
        ("comment with 900 characters", lambda k: f"{base} # " + "A" * 900),
        ("newline-separated comment lines inside parentheses", lambda k: "(x # a\n - mean(x) # b\n)"),
        ('first line closes docstring, next line is code', lambda k: f'(x # """\n - mean(x) # {payload(k)}\n)'),
        ("comment with markdown/html", lambda k: f"{base} # `</code><script>{payload(k)}</script>`"),
    ]
    for desc, make_expr in payloads:
        k = b.k
        b.add(A, "comment: " + desc, parse_attempt(k, make_expr(k), clean=base))
    for desc, expr in [
        ("string literal", base + ' + "a"'), ("triple-quoted string", base + " + '''a'''"),
        ("bytes literal", base + ' + b"a"'), ("f-string with __import__", base + " + f\"{__import__('os')}\""),
        ("explicit line continuation", "x \\\n - mean(x)"), ("trailing backslash", base + "\\"),
        ("leading backslash", "\\x - mean(x)"), ("newline inside parentheses", "(x\n - mean(x))"),
        ("newline outside parentheses", "x\n- mean(x)"), ("surrounding newlines", "\n\nx - mean(x)\n\n"),
        ("statement after ;", base + "; import os"), ("statement on the next line", base + "\nimport os"),
        ("tabs", "x\t-\tmean(x)"),
        ("unicode minus U+2212", "x \u2212 mean(x)"), ("fullwidth x (NFKC)", "\uff58 - mean(\uff58)"),
        ("mathematical italic x (NFKC)", "\U0001d465 - mean(\U0001d465)"), ("zero-width space", "x\u200b- mean(x)"),
        ("greek gamma", "\u03b3*x - mean(x)"), ("no-break space", "x - mean(x)\u00a0"),
        ("script e", "\u212f**x - mean(x)"),
    ]:
        k = b.k
        b.add(A, "text: " + desc, parse_attempt(k, expr))

    # numbers and constant folding (bounded by the worker timeout)
    for desc, expr, t in [
        ("1e308 literal", "x*1e308 - mean(x)", 20), ("1e999 literal (inf)", "x*1e999 - mean(x)", 20),
        ("10**400", "x*10**400 - mean(x)", 20), ("30-digit integer", "x*123456789012345678901234567890 - mean(x)", 20),
        ("1e12 literal", "x*1e12 - mean(x*1e12)", 20), ("1e-300 literal", "x*1e-300 - mean(x*1e-300)", 20),
        ("5e-324 literal", "x + 5e-324 - mean(x)", 20), ("hex, octal, underscores", "x*0x10 + x*0o7 + x*1_000 - mean(x)", 20),
        ("(10**12)**8 (exponent base too large)", "x*(10**12)**8 - mean(x)", 20),
        ("4 nested powers of 9 (beyond float range)", "x*((((9**8)**8)**8)**8) - mean(x)", 20),
        ("5 nested powers of 9", "x*(((((9**8)**8)**8)**8)**8) - mean(x)", 20),
        ("7 nested powers of 9", "x - mean(x) + ((((((9**8)**8)**8)**8)**8)**8)**8", 20),
        ("cube root of 4 nested powers + 1", "x*(((((7**8)**8)**8)**8)+1)**(1/3) - mean(x)", 20),
        ("cube root of 5 nested powers + 1", "x*(((((7**8)**8)**8)**8)**8+1)**(1/3) - mean(x)", 15),
        ("negative nested powers", "x*(2**-8)**-8 - mean(x)", 20), ("fractional power of a constant", "x*2**0.5 - mean(x)", 20),
    ]:
        k = b.k
        b.add(A, "number: " + desc, parse_attempt(k, expr, keys=("expression",)), timeout=t)

    # expressions that are degenerate for every input
    for desc, expr in [
        ("(x - mean(x))/0 + 1", "(x - mean(x))/0 + 1"), ("x/0", "x/0 - mean(x)"), ("x/(1 - 1)", "x/(1 - 1) - mean(x)"),
        ("x/(eps - eps)", "x/(eps - eps) - mean(x)"), ("1/(x - x)", "1/(x - x) + x - mean(x)"),
        ("0**-1", "x*0**-1 - mean(x)"), ("log(0)", "log(0)*x - mean(x)"), ("log(0*x)", "log(0*x) - mean(x)"),
        ("x/0.0", "x/0.0 - mean(x)"), ("0/0", "x*(0/0) - mean(x)"), ("sqrt(-1)", "sqrt(-1)*x - mean(x)"),
        ("log(-1)", "log(-1)*x - mean(x)"),
    ]:
        k = b.k
        b.add(A, "degenerate: " + desc, parse_attempt(k, expr, keys=("expression",)))

    # Python constructs outside the grammar
    constructs = [
        "x^2 - mean(x^2)", "x % 2 - mean(x)", "x // 2 - mean(x)", "x @ x", "~x", "not x", "x and x",
        "x if x else x", "x < 1", "lambda: x", "(lambda: __import__('os'))()", "x.real", "x.__class__",
        "mean.__globals__", "__import__('os').system('true')", "__builtins__", "mean(x=x)", "mean(*[x])",
        "mean(x, x)", "mean()", "print(x)", "eval('x')", "open('f')", "[x]", "(x,)", "{x}", "x[0]", "1j*x",
        "True*x", "None", "...", "(x := 1)", "(yield x)", "[x for x in x]", "x.mean()", "mean", "mean(x)(x)",
        "x(1)", "gamma(x)", "x = 1", "y - mean(y)", "pi*x", "I*x", "zoo*x", "nan*x", "M*x", "x**9", "x**x",
        "x**(2/0)", "x**(10**12)",
    ]
    for expr in constructs:
        k = b.k
        b.add(A, f"grammar: {expr!r}", parse_attempt(k, expr, keys=("expression",)))

    # empty text, NUL
    for expr in ["", " ", "\n", "\t\t", "#", "# only a comment", "()", "\x00", "x\x00", "x - mean(x) # \x00",
                 "x - \x00mean(x)"]:
        k = b.k
        b.add(A, f"empty/NUL: {expr!r}", parse_attempt(k, expr, keys=("expression",)))

    # legitimate expressions the engine should derive (or refuse clearly)
    legit = [
        "eps/x - mean(x)", "2/(1+x) - mean(x)", "abs(x/x) - mean(x)", "1/x - mean(1/x)", "x/(1 + x**2) - mean(x)",
        "exp(-x) - mean(exp(-x))", "log(1 + x**2) - mean(log(1 + x**2))", "x/sqrt(mean(x**2))",
        "(x - mean(x))/(abs(x) + 1)", "x**-2 - mean(x)", "exp(x)/sum(exp(x))",
        "gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta", "gamma*x/sqrt(mean(x**2) + eps)",
        "x - mean(x)", "2*x - mean(x)", "(x - mean(x))/(mean(abs(x - mean(x))) + eps)", "eps*x - mean(x)",
        "x**8 - mean(x**8)", "x**(1/3) - mean(x)", "x**0.5 - mean(x)", "sqrt(x) - mean(sqrt(x))",
        "log(x) - mean(log(x))", "x/sum(x)", "x - mean(mean(x))", "x*1e-5 - mean(x)",
    ]
    for expr in legit:
        k = b.k
        b.add(A, f"legit: {expr}", parse_attempt(k, expr, keys=("expression",)))

    # deep nesting and size
    for desc, expr in [
        ("50 parentheses", "(" * 50 + "x" + ")" * 50 + " - mean(x)"), ("199 parentheses", "(" * 199 + "x" + ")" * 199),
        ("250 parentheses", "(" * 250 + "x" + ")" * 250), ("150 unary minus", "-" * 150 + "x - mean(x)"),
        ("300 unary minus", "-" * 300 + "x"), ("30 nested sqrt", "sqrt(" * 30 + "x" + ")" * 30 + " - mean(x)"),
        ("100 additions", "+".join(["x"] * 100) + " - mean(x)"), ("20 nested mean", "mean(" * 20 + "x" + ")" * 20 + " + x"),
        ("2000 characters", "x - mean(x)" + " " * 2000), ("nested exp", "exp(exp(x/10)) - mean(exp(exp(x/10)))"),
    ]:
        k = b.k
        b.add(A, "size: " + desc, parse_attempt(k, expr, keys=("expression",)))

    # the same through the command line (exit status, message, no traceback)
    for desc, expr, extra, prove in [
        ("eps/x", "eps/x - mean(x)", (), False), ("2/(1+x)", "2/(1+x) - mean(x)", (), False),
        ("abs(x/x)", "abs(x/x) - mean(x)", (), False), ("(x - mean(x))/0 + 1", "(x - mean(x))/0 + 1", (), False),
        ("log(0)", "log(0)*x - mean(x)", (), False), ("x^2", "x^2 - mean(x^2)", (), False),
        ("x % 2", "x % 2", (), False), ("lambda", "lambda: 1", (), False), ("attribute", "x.__class__", (), False),
        ("__import__", "__import__('os').system('true')", (), False), ("mean(x=x)", "mean(x=x)", (), False),
        ("empty", "", (), False), ("only a comment", "# nothing", (), False),
        ("5 nested powers", "x*((((10**12)**8)**8)**8)**8 - mean(x)", (), False),
        ("sqrt(x) --prove", "sqrt(x) - mean(sqrt(x))", (), True), ("log(x) --prove", "log(x) - mean(log(x))", (), True),
        ("sqrt(x - mean(x)) --prove", "sqrt(x - mean(x))", (), True),
        ("x**0.5 --prove", "x**0.5 - mean(x**0.5)", (), True),
        ("rms --prove", "gamma*x/sqrt(mean(x**2) + eps)", (), True),
        ("deep parentheses", "(" * 250 + "x" + ")" * 250, (), False), ("2000 characters", "x" + " " * 2000, (), False),
        ("unicode minus", "x \u2212 mean(x)", (), False), ("zero-width space", "x\u200b- mean(x)", (), False),
        ("30-digit integer", "x*123456789012345678901234567890", (), False),
        ("x**x", "x**x - mean(x)", (), False), ("y", "y - mean(y)", (), False),
        ("axes out of range", "x - mean(x)", ("--ndim", "1"), False),
    ]:
        k = b.k
        pa = "1" if "gamma" in expr else "none"
        b.add(A, "cli derive: " + desc, cli_derive_attempt(k, expr, extra, prove=prove, pa=pa,
                                                           timeout=60 if prove else 40),
              where="local", timeout=90)
    k = b.k
    b.add(A, "cli derive: comment closes docstring (text format)",
          cli_derive_attempt(k, f'x - mean(x) # """ and {payload(k)} or """'), where="local", timeout=60)

    # derivation documents
    k = b.k
    b.add(A, "docs md: comment closes the module docstring",
          doc_attempt(k, "md", f'{NORM} # """ and {payload(k)} or """', probe="__never__"), "local", 200)
    k = b.k
    b.add(A, "docs md: backtick breaks out of the code span",
          doc_attempt(k, "md", NORM + " # `<img src=x onerror=alert(1)>`", probe="<img src=x onerror"), "local", 200)
    k = b.k
    b.add(A, "docs html: comment closes the module docstring",
          doc_attempt(k, "html", f'{NORM} # """;{payload(k)};"""', probe="__never__"), "local", 200)
    k = b.k
    b.add(A, "docs html: raw <script> element",
          doc_attempt(k, "html", NORM + " # </code><script>alert(1)</script>", probe="<script>alert"), "local", 200)
    k = b.k
    b.add(A, "docs tex: raw \\write18",
          doc_attempt(k, "tex", NORM + " # } \\immediate\\write18{touch /tmp/x} \\texttt{",
                      probe="\\immediate\\write18"), "local", 200)


# ----------------------------------------------------------------------------------------------------------------
# specs and the API

def api_attempt(call, expect, keys=(), check=None):
    """expect: 'refuse' (a clear error expected; success is wrong), 'ok' (check(result) -> (ok, detail)),
    'either' (a clear error, or success that check() accepts)."""
    def run():
        import symbn
        try:
            result = call(symbn)
        except Exception as e:  # noqa: BLE001
            cls, detail = exc_class(e, keys)
            if expect == "ok" and cls == "clear_error":
                return "clear_error", "refused a valid call: " + detail
            return cls, detail
        if expect == "refuse":
            return "wrong", "accepted: " + one_line(repr(getattr(result, "name", result)), 100)
        if check is None:
            return "correct", "accepted"
        ok, detail = check(result)
        return ("correct" if ok else "wrong"), detail
    return run


def axes_check(reduce_axes, param_axes, ndim=None):
    def check(s):
        ok = s.reduce_axes == tuple(reduce_axes) and s.param_axes == tuple(param_axes) and (ndim is None or
                                                                                             s.ndim == ndim)
        return ok, f"{s.name}: reduce {s.reduce_axes}, params {s.param_axes}, ndim {s.ndim}"
    return check


def collision_check(make_real):
    """A spec made by with_options must not share its name with a different real spec."""
    def check(s):
        import symbn
        real = make_real(symbn)
        fields = ("reduce_axes", "param_axes", "ndim", "expression", "groups")
        differ = [f for f in fields if getattr(s, f) != getattr(real, f)]
        if s.name == real.name and differ:
            return False, (f"name {s.name!r} collides with the real spec of that name, which differs in "
                           + ", ".join(f"{f} ({getattr(s, f)!r} vs {getattr(real, f)!r})"[:60] for f in differ))
        return True, f"{s.name} vs {real.name}: no collision"
    return check


WOPT = ["layout", "preset", "axes", "name", "expression", "ndim"]  # with_options refusals may name any of these


def build_specs(b: Builder):
    A = "specs"
    E = "x - mean(x)"
    R = "refuse"
    cases = [
        # make
        ("make(None)", lambda s: s.make(None), R, ["what", "preset", "expression", "none"]),
        ("make(123)", lambda s: s.make(123), R, ["what", "preset", "expression", "int"]),
        ("make(b'batch')", lambda s: s.make(b"batch"), R, ["what", "preset", "expression", "bytes"]),
        ("make(['batch'])", lambda s: s.make(["batch"]), R, ["what", "preset", "expression", "list"]),
        ("make('batchnorm')", lambda s: s.make("batchnorm"), R, ["preset"]),
        ("make('Batch')", lambda s: s.make("Batch"), R, ["preset"]),
        ("make('batch', layout='nchw')", lambda s: s.make("batch", layout="nchw"), R, ["layout"]),
        ("make('batch', layout=1)", lambda s: s.make("batch", layout=1), R, ["layout"]),
        ("make('batch', layout=['NC'])", lambda s: s.make("batch", layout=["NC"]), R, ["layout"]),
        ("make('batch', layout='NCHW', groups=2)", lambda s: s.make("batch", layout="NCHW", groups=2), R, ["groups"]),
        ("make('group', layout='NCHW')", lambda s: s.make("group", layout="NCHW"), R, ["groups"]),
        ("make('instance', layout='NC')", lambda s: s.make("instance", layout="NC"), R, ["layout"]),
        ("make('batch', like='layer')", lambda s: s.make("batch", like="layer"), R, ["like"]),
        ("make(E, like='nope')", lambda s: s.make(E, like="nope"), R, ["like", "preset"]),
        ("make(E, axes='0')", lambda s: s.make(E, axes="0", param_axes=()), R, ["axes"]),
        ("make(E, axes=(0.0,))", lambda s: s.make(E, axes=(0.0,), param_axes=()), R, ["axes"]),
        ("make(E, axes=(True,))", lambda s: s.make(E, axes=(True,), param_axes=()), R, ["axes"]),
        ("make(E, axes=((0,),))", lambda s: s.make(E, axes=((0,),), param_axes=()), R, ["axes"]),
        ("make(E, axes=(0, 0))", lambda s: s.make(E, axes=(0, 0), param_axes=()), R, ["axes", "repeated"]),
        ("make(E, axes=(5,), ndim=2)", lambda s: s.make(E, axes=(5,), param_axes=(), ndim=2), R, ["axes"]),
        ("make(E, axes=None)", lambda s: s.make(E, param_axes=()), R, ["axes"]),
        ("make(E, param_axes=None)", lambda s: s.make(E, axes=(0,)), R, ["param_axes"]),
        ("make(E, axes=())", lambda s: s.make(E, axes=(), param_axes=()), R, ["axes", "reduce"]),
        ("make(E, axes={0})", lambda s: s.make(E, axes={0}, param_axes=()), "either", ["axes"], axes_check((0,), ())),
        ("make(E, axes=np.int64(0))", lambda s: s.make(E, axes=__import__("numpy").int64(0), param_axes=()), "either",
         ["axes"], axes_check((0,), ())),
        ("make(E, axes=(-1,), ndim=3)", lambda s: s.make(E, axes=(-1,), param_axes=(), ndim=3), "ok", [],
         axes_check((2,), (), 3)),
        ("make(E, ndim='2')", lambda s: s.make(E, axes=(0,), param_axes=(), ndim="2"), R, ["ndim"]),
        ("make(E, ndim=2.0)", lambda s: s.make(E, axes=(0,), param_axes=(), ndim=2.0), R, ["ndim"]),
        ("make(E, ndim=True)", lambda s: s.make(E, axes=(0,), param_axes=(), ndim=True), R, ["ndim"]),
        ("make(E, ndim=0)", lambda s: s.make(E, axes=(0,), param_axes=(), ndim=0), R, ["ndim", "axes"]),
        ("make(E, ndim=100)", lambda s: s.make(E, axes=(0,), param_axes=(), ndim=100), R, ["ndim"]),
        ("make(E, param_axes=(1,), ndim=1)", lambda s: s.make(E, axes=(0,), param_axes=(1,), ndim=1), R, ["param_axes"]),
        ("make(E, param_axes overlapping)", lambda s: s.make("gamma*x - mean(x)", axes=(0, 1), param_axes=(1,)), R,
         ["param_axes"]),
        ("make(E, layout='NC', axes=(0,))", lambda s: s.make(E, layout="NC", axes=(0,), param_axes=()), R, ["layout"]),
        ("make('x', axes=0)", lambda s: s.make("x", axes=0, param_axes=()), "either", ["expression", "mean", "reduc"],
         axes_check((0,), ())),
        # groups and channel_axis
        ("make(group, groups='4')", lambda s: s.make("group", layout="NCHW", groups="4"), R, ["groups"]),
        ("make(group, groups=0)", lambda s: s.make("group", layout="NCHW", groups=0), R, ["groups"]),
        ("make(group, groups=-1)", lambda s: s.make("group", layout="NCHW", groups=-1), R, ["groups"]),
        ("make(group, groups=2.0)", lambda s: s.make("group", layout="NCHW", groups=2.0), R, ["groups"]),
        ("make(group, groups=True)", lambda s: s.make("group", layout="NCHW", groups=True), R, ["groups"]),
        ("custom(channel_axis='1')", lambda s: s.custom(E, ndim=2, axes=(1,), param_axes=(), channel_axis="1"), R,
         ["channel_axis"]),
        ("custom(channel_axis=1.0)", lambda s: s.custom(E, ndim=2, axes=(1,), param_axes=(), channel_axis=1.0), R,
         ["channel_axis"]),
        ("custom(channel_axis=5)", lambda s: s.custom(E, ndim=2, axes=(1,), param_axes=(), channel_axis=5), R,
         ["channel_axis"]),
        ("custom(groups=2, channel_axis=None)", lambda s: s.custom(E, ndim=2, axes=(1,), param_axes=(), groups=2), R,
         ["channel_axis"]),
        ("custom(groups=2, channel_axis='1')",
         lambda s: s.custom(E, ndim=2, axes=(1,), param_axes=(), groups=2, channel_axis="1"), R, ["channel_axis"]),
        ("custom(groups=2, channel_axis=0 not reduced)",
         lambda s: s.custom(E, ndim=2, axes=(1,), param_axes=(), groups=2, channel_axis=0), R, ["channel_axis"]),
        # eps
        ("preset eps=10**400", lambda s: s.preset("batch", "NC", eps=10**400), R, ["eps"]),
        ("preset eps=nan", lambda s: s.preset("batch", "NC", eps=float("nan")), R, ["eps"]),
        ("preset eps=inf", lambda s: s.preset("batch", "NC", eps=float("inf")), R, ["eps"]),
        ("preset eps=-1", lambda s: s.preset("batch", "NC", eps=-1), R, ["eps"]),
        ("preset eps=0", lambda s: s.preset("batch", "NC", eps=0), R, ["eps"]),
        ("preset eps='1e-5'", lambda s: s.preset("batch", "NC", eps="1e-5"), R, ["eps"]),
        ("preset eps=None", lambda s: s.preset("batch", "NC", eps=None), R, ["eps"]),
        ("preset eps=True", lambda s: s.preset("batch", "NC", eps=True), R, ["eps"]),
        ("preset eps=1e-400 (0.0)", lambda s: s.preset("batch", "NC", eps=1e-400), R, ["eps"]),
        ("preset eps=np.float32(1e-3)", lambda s: s.preset("batch", "NC", eps=__import__("numpy").float32(1e-3)),
         "either", ["eps"], lambda sp: (abs(float(sp.eps) - 1e-3) < 1e-9, sp.name)),
        ("preset eps=1e300", lambda s: s.preset("batch", "NC", eps=1e300), "either", ["eps"],
         lambda sp: (sp.eps == 1e300, sp.name)),
        ("preset eps=Fraction(1, 1000)", lambda s: s.preset("batch", "NC", eps=__import__("fractions").Fraction(1, 1000)),
         "either", ["eps"], lambda sp: (float(sp.eps) == 1e-3, sp.name)),
        # momentum
        # 0 and 1 are valid, as in PyTorch and Keras (running statistics kept, or replaced by each batch's)
        ("preset momentum=0", lambda s: s.preset("batch", "NC", momentum=0), "either", ["momentum"],
         lambda sp: (sp.momentum == 0.0, sp.name)),
        ("preset momentum=1", lambda s: s.preset("batch", "NC", momentum=1), "either", ["momentum"],
         lambda sp: (sp.momentum == 1.0, sp.name)),
        ("preset layer momentum=0.1 (no running statistics)", lambda s: s.preset("layer", "NC", momentum=0.1), R,
         ["momentum", "running statistics"]),
        ("preset layer running='keras' (no running statistics)", lambda s: s.preset("layer", "NC", running="keras"),
         R, ["running", "running statistics"]),
        ("preset momentum=-0.5", lambda s: s.preset("batch", "NC", momentum=-0.5), R, ["momentum"]),
        ("preset momentum=nan", lambda s: s.preset("batch", "NC", momentum=float("nan")), R, ["momentum"]),
        ("preset momentum='0.1'", lambda s: s.preset("batch", "NC", momentum="0.1"), R, ["momentum"]),
        ("preset momentum=True", lambda s: s.preset("batch", "NC", momentum=True), R, ["momentum"]),
        ("preset momentum=10**400", lambda s: s.preset("batch", "NC", momentum=10**400), R, ["momentum"]),
        # running, ddof, center, scale
        ("preset running=['pytorch']", lambda s: s.preset("batch", "NC", running=["pytorch"]), R, ["running"]),
        ("preset running='PyTorch'", lambda s: s.preset("batch", "NC", running="PyTorch"), R, ["running"]),
        ("preset running=None", lambda s: s.preset("batch", "NC", running=None), R, ["running"]),
        ("preset running={'pytorch': 1}", lambda s: s.preset("batch", "NC", running={"pytorch": 1}), R, ["running"]),
        ("preset ddof=2", lambda s: s.preset("layer", "NC", ddof=2), R, ["ddof"]),
        ("preset ddof='1'", lambda s: s.preset("layer", "NC", ddof="1"), R, ["ddof"]),
        ("preset ddof=1.0", lambda s: s.preset("layer", "NC", ddof=1.0), "either", ["ddof"],
         lambda sp: (sp.name == s_name("layer", "NC", ddof=1), sp.name)),
        ("preset ddof=True", lambda s: s.preset("layer", "NC", ddof=True), R, ["ddof"]),
        ("preset center='yes'", lambda s: s.preset("batch", "NC", center="yes"), R, ["center"]),
        ("preset scale=None", lambda s: s.preset("batch", "NC", scale=None), R, ["scale"]),
        ("preset scale='False'", lambda s: s.preset("batch", "NC", scale="False"), R, ["scale"]),
        ("batch center=False", lambda s: s.preset("batch", "NC", center=False), "ok", [],
         lambda sp: (sp.name != s_name("batch", "NC") and not sp.center, sp.name)),
        ("preset unknown option foo=1", lambda s: s.preset("batch", "NC", foo=1), R, ["foo"]),
        ("preset('nope')", lambda s: s.preset("nope"), R, ["preset"]),
        ("preset(None)", lambda s: s.preset(None), R, ["preset", "name"]),
        ("preset(['batch'])", lambda s: s.preset(["batch"]), R, ["preset", "name"]),
        ("preset('batch', groups=4)", lambda s: s.preset("batch", "NC", groups=4), R, ["groups"]),
        ("preset('group', groups=3, 'NCHW') (valid spec)", lambda s: s.preset("group", "NCHW", groups=3), "ok", [],
         axes_check((1, 2, 3), (1,), 4)),
        ("preset('batch', 'NHWC') axes", lambda s: s.preset("batch", "NHWC"), "ok", [], axes_check((0, 1, 2), (3,), 4)),
        ("preset('layer', 'NCHW') axes", lambda s: s.preset("layer", "NCHW"), "ok", [],
         axes_check((1, 2, 3), (1, 2, 3), 4)),
        ("preset('instance', 'NCDHW') axes", lambda s: s.preset("instance", "NCDHW"), "ok", [],
         axes_check((2, 3, 4), (1,), 5)),
        # custom / Spec
        ("custom(None)", lambda s: s.custom(None, ndim=2, axes=(1,), param_axes=()), R, ["expression"]),
        ("custom(E, axes=None)", lambda s: s.custom(E, ndim=2, axes=None, param_axes=()), R, ["axes"]),
        ("custom(E, param_axes='1')", lambda s: s.custom(E, ndim=2, axes=(1,), param_axes="1"), R, ["param_axes"]),
        ("custom(E, center=True without beta)", lambda s: s.custom(E, ndim=2, axes=(1,), param_axes=(), center=True),
         R, ["center"]),
        ("custom(E, ndim=None)", lambda s: s.custom(E, ndim=None, axes=(1,), param_axes=()), R, ["ndim"]),
        ("Spec(expression=None)", lambda s: s.Spec(None, 2, (1,), ()), R, ["expression"]),
        ("Spec(tree=('evil',)) is ignored", lambda s: s.Spec(E, 2, (1,), (), center=False, scale=False, tree=("evil",)), "ok", [],
         lambda sp: (sp.tree != ("evil",), "tree rebuilt from the text")),
        ("Spec(layout='bogus')", lambda s: s.Spec(E, 2, (1,), (), center=False, scale=False, layout="bogus"), R,
         ["layout"]),
        ("Spec(preset='layer') for a custom expression",
         lambda s: s.Spec(E, 2, (1,), (), center=False, scale=False, preset="layer"), "either", ["preset"],
         collision_check(lambda s: s.make("layer", axes=(1,), param_axes=(), center=False, scale=False))),
        # load / derive
        ("load('batch')", lambda s: s.load("batch"), R, ["spec"]),
        ("load(None)", lambda s: s.load(None), R, ["spec"]),
        ("load(spec, backend='torch')", lambda s: s.load(s.preset("batch", "NC"), backend="torch"), R, ["backend"]),
        ("load(spec, backend=None)", lambda s: s.load(s.preset("batch", "NC"), backend=None), R, ["backend"]),
        ("load(spec, backend=['numpy'])", lambda s: s.load(s.preset("batch", "NC"), backend=["numpy"]), R, ["backend"]),
        ("derive('batch')", lambda s: s.derive("batch"), R, ["spec"]),
        ("derive(None)", lambda s: s.derive(None), R, ["spec"]),
        # with_options: a name must never collide with a different real spec
        ("with_options(layout='NHWC') on batch NCHW", lambda s: s.preset("batch", "NCHW").with_options(layout="NHWC"),
         "either", WOPT, collision_check(lambda s: s.preset("batch", "NHWC"))),
        ("with_options(layout='NC') on batch NCHW", lambda s: s.preset("batch", "NCHW").with_options(layout="NC"),
         "either", WOPT, collision_check(lambda s: s.preset("batch", "NC"))),
        ("with_options(layout='NCHW') on layer NC", lambda s: s.preset("layer", "NC").with_options(layout="NCHW"),
         "either", WOPT, collision_check(lambda s: s.preset("layer", "NCHW"))),
        ("with_options(preset='layer') on batch NC", lambda s: s.preset("batch", "NC").with_options(preset="layer"),
         "either", WOPT, collision_check(lambda s: s.preset("layer", "NC"))),
        ("with_options(reduce_axes=(0,)) on batch NCHW",
         lambda s: s.preset("batch", "NCHW").with_options(reduce_axes=(0,)), "either", WOPT,
         collision_check(lambda s: s.preset("batch", "NCHW"))),
        ("with_options(expression=E) on batch NC",
         lambda s: s.preset("batch", "NC").with_options(expression="gamma*x/sqrt(mean(x**2) + eps) + beta"),
         "either", WOPT, collision_check(lambda s: s.preset("batch", "NC"))),
        ("with_options(layout='bogus') on batch NC", lambda s: s.preset("batch", "NC").with_options(layout="bogus"),
         R, ["layout"]),
        ("with_options(groups=8) on group4 NCHW",
         lambda s: s.preset("group", "NCHW", groups=4).with_options(groups=8), "either", ["groups"],
         collision_check(lambda s: s.preset("group", "NCHW", groups=8))),
        ("with_options(eps=1e-3) on batch NC", lambda s: s.preset("batch", "NC").with_options(eps=1e-3), "ok", [],
         lambda sp: (sp.name != s_name("batch", "NC") and sp.eps == 1e-3, sp.name)),
        ("with_options(eps=-1) on batch NC", lambda s: s.preset("batch", "NC").with_options(eps=-1), R, ["eps"]),
        ("with_options(ndim=3) on batch NC", lambda s: s.preset("batch", "NC").with_options(ndim=3), "either",
         WOPT, collision_check(lambda s: s.preset("batch", "NC"))),
        ("with_options(nonsense=1)", lambda s: s.preset("batch", "NC").with_options(nonsense=1), R, ["nonsense"]),
        ("two different customs get different names",
         lambda s: (s.make("x - mean(x)", axes=(1,), param_axes=()), s.make("x - 2*mean(x)", axes=(1,), param_axes=())),
         "ok", [], lambda p: (p[0].name != p[1].name, f"{p[0].name} / {p[1].name}")),
        ("eps in the name is distinct (1e-5 vs 1.00001e-5)",
         lambda s: (s.preset("batch", "NC", eps=1e-5 * 1.0000001), s.preset("batch", "NC")), "ok", [],
         lambda p: (p[0].name != p[1].name, f"{p[0].name} / {p[1].name}")),
    ]
    for case in cases:
        desc, call, expect, keys = case[:4]
        check = case[4] if len(case) > 4 else None
        b.add(A, desc, api_attempt(call, expect, keys, check))


def s_name(*args, **kw):
    import symbn
    return symbn.preset(*args, **kw).name


# ----------------------------------------------------------------------------------------------------------------
# kernel inputs

def k_correct(modname, dtype="float64", eval_mode=False):
    def run():
        import numpy as np
        m = gen(modname)
        kind = kind_of(modname)
        d = data(kind, dtype)
        tol = 1e-10 if dtype == "float64" else 1e-4
        if eval_mode and not m.RUNNING:  # no running statistics: eval mode is the training computation
            y = m.forward_eval(d["x"], *params(m, d))
            ref = ref_forward(kind, d["x"], d["gamma"], d["beta"] if has_beta(m) else None)
            e1 = relerr(y, ref["y"])
            _, *saved = m.forward_train(d["x"], *params(m, d))
            e2 = relerr(m.backward(d["dy"], d["x"], d["gamma"], *saved)[0],
                        ref_backward(kind, d["dy"], d["x"], d["gamma"])["dx"])
            ok = e1 <= tol and e2 <= tol and not hasattr(m, "backward_eval")
            return ("correct" if ok else "wrong"), f"eval (the input's own statistics) y {e1:.0e}, dx {e2:.0e}"
        if eval_mode:
            y = m.forward_eval(d["x"], *params(m, d), *running(m, d))
            ref = ref_eval_forward(kind, d["x"], d["gamma"], d["beta"] if has_beta(m) else None, d["rmu"], d["rvar"])
            e1 = relerr(y, ref)
            dx, *_ = m.backward_eval(d["dy"], d["x"], d["gamma"], *running(m, d))
            keep = tuple(1 if a in kind["red"] else n for a, n in enumerate(d["x"].shape))
            ref_dx = d["dy"].astype(np.float64) * d["gamma"].reshape(_bshape(kind, d["x"].shape)) / np.sqrt(
                d["rvar"].reshape(keep) + 1e-5)
            e2 = relerr(dx, ref_dx)
            ok = e1 <= tol and e2 <= tol and y.dtype == np.dtype(dtype)
            return ("correct" if ok else "wrong"), f"eval y {e1:.0e}, dx {e2:.0e}"
        rmu, rvar = d["rmu"].copy(), d["rvar"].copy()
        run_args = ((rmu, rvar) if has_beta(m) else (rvar,)) if m.RUNNING else ()
        y, *saved = m.forward_train(d["x"], *params(m, d), *run_args)
        ref = ref_forward(kind, d["x"], d["gamma"], d["beta"] if has_beta(m) else None)
        e_y = relerr(y, ref["y"])
        grads = m.backward(d["dy"], d["x"], d["gamma"], *saved)
        rb = ref_backward(kind, d["dy"], d["x"], d["gamma"])
        e_dx, e_dg = relerr(grads[0], rb["dx"]), relerr(grads[1], rb["dgamma"])
        errs = [e_y, e_dx, e_dg]
        if kind is KINDS["batch_nc"] or kind is KINDS["batch_nchw"] or kind is KINDS["batch_nhwc"]:
            m_count = math.prod(d["x"].shape[a] for a in kind["red"])
            r1, r2 = ref_running(d["rmu"], d["rvar"], ref["mu"], ref["var"], m_count, 0.1)
            errs += [relerr(rmu, r1), relerr(rvar, r2)]
        ok = all(e <= tol for e in errs) and y.dtype == np.dtype(dtype)
        return ("correct" if ok else "wrong"), "errors " + ", ".join(f"{e:.0e}" for e in errs)
    return run


def k_refuse(modname, keys, mutate, fn="forward_train", dtype="float64"):
    """Call *fn* with arguments changed by mutate(d, m) -> (args, kwargs, arrays that must not change)."""
    def run():
        m = gen(modname)
        d = data(kind_of(modname), dtype)
        args, kwargs, arrays = mutate(d, m)
        return expect_refusal(lambda: getattr(m, fn)(*args, **kwargs), keys, arrays)
    return run


def k_view(modname, make_views):
    """Strided / odd-layout inputs: the result must equal the reference on the same values."""
    def run():
        import numpy as np
        m = gen(modname)
        kind = kind_of(modname)
        d = data(kind)
        x, dy, gamma, beta = make_views(d)
        y, *saved = m.forward_train(x, gamma, beta)
        ref = ref_forward(kind, np.array(x), np.array(gamma), np.array(beta))
        dx = m.backward(dy, x, gamma, *saved)[0]
        rb = ref_backward(kind, np.array(dy), np.array(x), np.array(gamma))
        e1, e2 = relerr(y, ref["y"]), relerr(dx, rb["dx"])
        return ("correct" if e1 <= 1e-10 and e2 <= 1e-10 else "wrong"), f"y {e1:.0e}, dx {e2:.0e}"
    return run


def k_nonfinite(modname, place):
    """NaN/inf in one place: NaN must stay where the textbook formula puts it, nowhere else."""
    def run():
        import numpy as np
        m = gen(modname)
        kind = kind_of(modname)
        d = data(kind)
        place(d)
        with np.errstate(all="ignore"):
            y, *saved = m.forward_train(d["x"], *params(m, d))
            ref = ref_forward(kind, d["x"], d["gamma"], d["beta"] if has_beta(m) else None)
            e = relerr(y, ref["y"])
            dx = m.backward(d["dy"], d["x"], d["gamma"], *saved)[0]
            e2 = relerr(dx, ref_backward(kind, d["dy"], d["x"], d["gamma"])["dx"])
        if e <= 1e-10 and e2 <= 1e-10:
            return "correct", "non-finite values only where the formula puts them"
        return "wrong", f"y {e:.1e}, dx {e2:.1e} against the reference (NaN/inf placement or leakage)"
    return run


def k_scale(modname, dtype, scale, eps=None):
    """Extreme magnitudes: the result must be the reference wherever it is representable, never silent zeros."""
    def run():
        import numpy as np
        m = gen(modname)
        kind = kind_of(modname)
        rng = np.random.default_rng(1)
        shape = kind["shape"]
        x = (rng.normal(size=shape) * scale).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        gamma = rng.uniform(0.5, 1.5, shape[kind["ch"]])
        beta = rng.normal(size=shape[kind["ch"]])
        e = 1e-5 if eps is None else eps
        p = (gamma, beta) if has_beta(m) else (gamma,)
        with np.errstate(all="ignore"):
            y, *saved = m.forward_train(x, *p, eps=e)
            dx = m.backward(dy, x, gamma, *saved, eps=e)[0]
            ref = ref_forward(kind, x, gamma, beta if has_beta(m) else None, e, scale=scale)
            rb = ref_backward(kind, dy, x, gamma, e, scale=scale)
        y_rep = np.isfinite(ref["y"].astype(dtype)).all()
        dx_rep = np.isfinite(rb["dx"].astype(dtype)).all() and np.abs(rb["dx"]).max() > np.finfo(dtype).tiny * 1e3
        tol = 1e-3
        probs = []
        for name, got, want, rep in (("y", y, ref["y"], y_rep), ("dx", dx, rb["dx"], dx_rep)):
            if not rep:
                continue
            if np.all(got == 0):
                probs.append(f"{name} silently all zeros")
            elif not np.isfinite(got).all():
                probs.append(f"{name} has NaN/inf where finite values exist")
            else:
                err = relerr(got, want)
                if err > tol:
                    probs.append(f"{name} relative error {err:.1e}")
        if probs:
            return "wrong", "; ".join(probs)
        return "correct", "matches the scaled float64 reference"
    return run


def k_offset(modname, offset):
    """float32 backward accuracy with a large mean offset, against float64 arithmetic on the same values."""
    def run():
        import numpy as np
        m = gen(modname)
        kind = kind_of(modname)
        rng = np.random.default_rng(2)
        shape = (256, 6) if kind["shape"] == (16, 6) else kind["shape"]
        x = (offset + rng.normal(size=shape)).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        c = shape[kind["ch"]]
        gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
        y, *saved = m.forward_train(x, *((gamma, beta) if has_beta(m) else (gamma,)))
        dx = m.backward(dy, x, gamma, *saved)[0]
        rb = ref_backward(kind, dy, x, gamma)
        err = relerr(dx, rb["dx"])
        return ("correct" if err <= 1e-3 else "wrong"), f"float32 dx relative error {err:.1e} at mean {offset:g}"
    return run


def k_percall(modname, fn, name, value, with_out=False):
    """A bad per-call momentum or eps: refused with every array unchanged, or wrong."""
    def run():
        import numpy as np
        m = gen(modname)
        kind = kind_of(modname)
        d = data(kind)
        rm, rv = d["rmu"].copy(), d["rvar"].copy()
        out = np.full_like(d["x"], 12345.0)
        kw = {name: value}
        if with_out:
            kw["out"] = out
        given = ((rm, rv) if has_beta(m) else (rv,)) if m.RUNNING else ()  # none where statistics are per sample
        if fn == "forward_train":
            args = (d["x"], *params(m, d), *given)
        elif fn == "forward_eval":
            args = (d["x"], *params(m, d), *given)
        else:  # backward_eval
            args = (d["dy"], d["x"], d["gamma"], *given)
        arrays = dict(running_mu=rm, running_var=rv, out=out, x=d["x"], gamma=d["gamma"])
        with np.errstate(all="ignore"):
            verdict, result = Refusal((name,), **arrays).run(lambda: getattr(m, fn)(*args, **kw))
        if verdict is not None:
            return verdict
        return "wrong", f"{fn}({name}={value!r}) accepted" + (
            "; running statistics now non-finite" if not (np.isfinite(rm).all() and np.isfinite(rv).all()) else "")
    return run


def k_overlap(modname, fn, build, keys=("out", "overlap", "memory", "share", "same")):
    """build(d, m) -> (args, kwargs, arrays to watch); an overlapping out/running must be refused."""
    def run():
        import numpy as np
        m = gen(modname)
        d = data(kind_of(modname))
        args, kwargs, arrays = build(d, m, np)
        with np.errstate(all="ignore"):
            verdict, result = Refusal(keys, **arrays).run(lambda: getattr(m, fn)(*args, **kwargs))
        if verdict is not None:
            return verdict
        return "wrong", "overlapping arrays accepted (an input is overwritten)"
    return run


def k_update_running(count, momentum=0.1):
    def run():
        import numpy as np
        m = gen("batch_nc_numpy")
        rm, rv = np.zeros(6), np.ones(6)
        mu, var = np.full(6, 0.5), np.full(6, 2.0)
        verdict, _ = Refusal(("count", "momentum", "M"), running_mu=rm, running_var=rv).run(
            lambda: m.update_running(rm, rv, mu, var, count, momentum))
        if verdict is not None:
            return verdict
        if np.isfinite(rm).all() and np.isfinite(rv).all() and count > 1 and 0 <= momentum <= 1:
            return "correct", "updated"
        return "wrong", f"update_running(count={count}, momentum={momentum}) accepted: running_var {rv[0]!r}"
    return run


def build_kernels(b: Builder):
    A = "kernels"
    nb = 180.0  # Numba attempts include compilation
    for name in ["batch_nc_numpy", "batch_nchw_numpy", "batch_nhwc_numpy", "layer_nc_numpy", "rms_nc_numpy",
                 "instance_nchw_numpy", "group4_nchw_numpy"]:
        b.add(A, f"{name}: train forward/backward vs reference", k_correct(name))
    for name in ["batch_nc_numpy", "batch_nchw_numpy", "batch_nhwc_numpy", "layer_nc_numpy", "rms_nc_numpy"]:
        b.add(A, f"{name}: eval forward/backward vs reference", k_correct(name, eval_mode=True))
    for name in ["batch_nc_numpy", "layer_nc_numpy", "group4_nchw_numpy"]:
        b.add(A, f"{name}: float32 train vs reference", k_correct(name, "float32"))
    for name in ["batch_nc_numba", "rms_nc_numba", "layer_nc_numba"]:
        b.add(A, f"{name}: train forward/backward vs reference", k_correct(name), timeout=nb)
    b.add(A, "batch_nc_numba: eval forward/backward vs reference", k_correct("batch_nc_numba", eval_mode=True),
          timeout=nb)

    def x_as(dtype):
        def mut(d, m):
            x = d["x"].astype(dtype) if dtype != "str" else d["x"].astype(str)
            return (x, *params(m, d)), {}, {}
        return mut

    for dt in ["int32", "int64", "float16", "complex128", "bool", "object", "str", "uint8", "longdouble"]:
        b.add(A, f"batch_nc_numpy: x dtype {dt}", k_refuse("batch_nc_numpy", ["x", "dtype"], x_as(dt)))

    for desc, which, conv in [
        ("gamma int64", "gamma", lambda np, a: np.arange(6)), ("gamma complex", "gamma", lambda np, a: a + 1j),
        ("gamma float16", "gamma", lambda np, a: a.astype(np.float16)),
        ("gamma strings", "gamma", lambda np, a: a.astype(str)), ("beta bool", "beta", lambda np, a: a > 0),
        ("gamma shape (5,)", "gamma", lambda np, a: a[:5]), ("gamma shape (6, 1)", "gamma", lambda np, a: a[:, None]),
        ("gamma scalar", "gamma", lambda np, a: np.float64(1.0)), ("beta shape (7,)", "beta", lambda np, a: np.zeros(7)),
        ("running_mu shape (5,)", "rmu", lambda np, a: a[:5]), ("running_var int64", "rvar", lambda np, a: np.ones(6, int)),
        ("running_var read-only", "rvar", lambda np, a: np.lib.stride_tricks.as_strided(a, writeable=False)),
        ("running_mu list", "rmu", lambda np, a: list(a)),
    ]:
        def mut(d, m, which=which, conv=conv):
            import numpy as np
            d = dict(d)
            d[which] = conv(np, d[which])
            rm = d["rmu"].copy() if which != "rmu" else d["rmu"]
            rv = d["rvar"].copy() if which != "rvar" else d["rvar"]
            arrays = {k: v for k, v in dict(running_mu=rm, running_var=rv).items() if isinstance(v, np.ndarray)
                      and v.flags.writeable}
            return (d["x"], d["gamma"], d["beta"], rm, rv), {}, arrays
        key = {"rmu": "running_mu", "rvar": "running_var"}.get(which, which)
        b.add(A, f"batch_nc_numpy: {desc}", k_refuse("batch_nc_numpy", [key], mut))

    def shape_mut(xshape):
        def mut(d, m):
            import numpy as np
            x = np.random.default_rng(0).normal(size=xshape)
            return (x, *params(m, d)), {}, {}
        return mut

    for desc, shp in [("x 1-D", (16,)), ("x 3-D", (16, 6, 1)), ("x (0, 6)", (0, 6)), ("x (16, 0)", (16, 0)),
                      ("x 0-d", ()), ("x with one row (M = 1) in training", (1, 6))]:
        b.add(A, f"batch_nc_numpy: {desc}", k_refuse("batch_nc_numpy", ["x", "shape", "dimension", "value", "empty"],
                                                     shape_mut(shp)))
    b.add(A, "group4_nchw_numpy: 6 channels for 4 groups",
          k_refuse("group4_nchw_numpy", ["group", "channel", "divisible"], shape_mut((3, 6, 3, 4))))

    for desc, build_out in [
        ("out wrong shape", lambda np, x: np.empty((16, 5))), ("out wrong dtype", lambda np, x: np.empty(x.shape, np.float32)),
        ("out Fortran-ordered", lambda np, x: np.empty(x.shape, order="F")),
        ("out read-only", lambda np, x: np.lib.stride_tricks.as_strided(np.empty(x.shape), writeable=False)),
        ("out a list", lambda np, x: [[0.0] * 6] * 16), ("out strided view", lambda np, x: np.empty((16, 12))[:, ::2]),
    ]:
        def mut(d, m, build_out=build_out):
            import numpy as np
            out = build_out(np, d["x"])
            arrays = {"out": out} if isinstance(out, np.ndarray) and out.flags.writeable else {}
            return (d["x"], *params(m, d)), {"out": out}, arrays
        b.add(A, f"batch_nc_numpy: {desc}", k_refuse("batch_nc_numpy", ["out"], mut))

    def dy_mut(dtype=None, shape=None):
        def mut(d, m):
            import numpy as np
            dy = d["dy"].astype(dtype) if dtype else d["dy"]
            if shape:
                dy = np.zeros(shape)
            y, mu, istd = m.forward_train(d["x"], d["gamma"], d["beta"])
            return (dy, d["x"], d["gamma"], mu, istd), {}, {}
        return mut

    b.add(A, "batch_nc_numpy: backward dy float32 with x float64",
          k_refuse("batch_nc_numpy", ["dy", "dtype"], dy_mut("float32"), fn="backward"))
    b.add(A, "batch_nc_numpy: backward dy wrong shape",
          k_refuse("batch_nc_numpy", ["dy", "shape"], dy_mut(shape=(16, 5)), fn="backward"))

    def mu_bad(d, m):
        import numpy as np
        return (d["dy"], d["x"], d["gamma"], np.zeros(5), np.ones(6)), {}, {}
    b.add(A, "batch_nc_numpy: backward mu wrong shape", k_refuse("batch_nc_numpy", ["mu"], mu_bad, fn="backward"))
    b.add(A, "batch_nc_numpy: forward_train missing beta",
          k_refuse("batch_nc_numpy", ["beta"], lambda d, m: ((d["x"], d["gamma"]), {}, {})))
    b.add(A, "batch_nc_numpy: forward_train unknown keyword",
          k_refuse("batch_nc_numpy", ["foo"], lambda d, m: ((d["x"], d["gamma"], d["beta"]), {"foo": 1}, {})))

    def half_running(d, m):
        rm = d["rmu"].copy()
        return (d["x"], d["gamma"], d["beta"], rm), {}, dict(running_mu=rm)
    b.add(A, "batch_nc_numpy: running_mu without running_var",
          k_refuse("batch_nc_numpy", ["running"], half_running))

    # accepted odd inputs that must give the right answer
    b.add(A, "batch_nc_numpy: x[:, ::2] strided", k_view("batch_nc_numpy", lambda d: (
        __import__("numpy").repeat(d["x"], 2, axis=1)[:, ::2], d["dy"], d["gamma"], d["beta"])))
    b.add(A, "batch_nc_numpy: x Fortran-ordered", k_view("batch_nc_numpy", lambda d: (
        __import__("numpy").asfortranarray(d["x"]), __import__("numpy").asfortranarray(d["dy"]), d["gamma"], d["beta"])))
    b.add(A, "batch_nc_numpy: x reversed (negative strides)", k_view("batch_nc_numpy", lambda d: (
        d["x"][::-1], d["dy"][::-1], d["gamma"], d["beta"])))
    b.add(A, "batch_nc_numpy: x broadcast (zero strides, zero variance)", k_view("batch_nc_numpy", lambda d: (
        __import__("numpy").broadcast_to(d["x"][0], (16, 6)), d["dy"], d["gamma"], d["beta"])))
    b.add(A, "batch_nc_numpy: read-only x and dy", k_view("batch_nc_numpy", lambda d: (
        __import__("numpy").lib.stride_tricks.as_strided(d["x"], writeable=False), d["dy"], d["gamma"], d["beta"])))
    b.add(A, "batch_nc_numpy: x as nested lists", k_view("batch_nc_numpy", lambda d: (
        d["x"].tolist(), d["dy"], list(d["gamma"]), list(d["beta"]))))
    b.add(A, "batch_nc_numpy: gamma/beta strided views", k_view("batch_nc_numpy", lambda d: (
        d["x"], d["dy"], __import__("numpy").repeat(d["gamma"], 2)[::2], __import__("numpy").repeat(d["beta"], 3)[::3])))
    b.add(A, "batch_nchw_numpy: x a transposed NHWC view", k_view("batch_nchw_numpy", lambda d: (
        __import__("numpy").ascontiguousarray(d["x"].transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), d["dy"],
        d["gamma"], d["beta"])))
    b.add(A, "batch_nhwc_numpy: x a strided slice", k_view("batch_nhwc_numpy", lambda d: (
        __import__("numpy").concatenate([d["x"], d["x"]], axis=2)[:, :, ::2], d["dy"], d["gamma"], d["beta"])))
    b.add(A, "batch_nc_numpy: gamma and beta the same array", k_view("batch_nc_numpy", lambda d: (
        d["x"], d["dy"], d["gamma"], d["gamma"])))

    def nan_at(key, val, idx=(3, 2)):
        def place(d):
            d[key] = d[key].copy()
            if key in ("gamma",):
                d[key][idx[1]] = val
            else:
                d[key][idx] = val
        return place

    for desc, key, val in [("x NaN", "x", float("nan")), ("x inf", "x", float("inf")), ("x -inf", "x", -float("inf")),
                           ("dy NaN", "dy", float("nan")), ("gamma NaN", "gamma", float("nan"))]:
        b.add(A, f"batch_nc_numpy: {desc} in one element", k_nonfinite("batch_nc_numpy", nan_at(key, val)))
    b.add(A, "layer_nc_numpy: x NaN in one element", k_nonfinite("layer_nc_numpy", nan_at("x", float("nan"))))
    b.add(A, "rms_nc_numpy: x inf in one element", k_nonfinite("rms_nc_numpy", nan_at("x", float("inf"))))

    def const_col(d):
        d["x"] = d["x"].copy()
        d["x"][:, 1] = 3.0
    b.add(A, "batch_nc_numpy: a constant channel (zero variance)", k_nonfinite("batch_nc_numpy", const_col))

    # extreme scales
    for name in ["batch_nc_numpy", "layer_nc_numpy", "rms_nc_numpy", "batch_nc_numba", "layer_nc_numba", "rms_nc_numba"]:
        t = nb if "numba" in name else 20
        for s in (1e19, 1e25, 1e30):
            b.add(A, f"{name}: float32 |x| ~ {s:g}", k_scale(name, "float32", s), timeout=t)
    for name in ["batch_nc_numpy", "rms_nc_numpy", "batch_nc_numba", "rms_nc_numba"]:
        t = nb if "numba" in name else 20
        b.add(A, f"{name}: float64 |x| ~ 1e200", k_scale(name, "float64", 1e200), timeout=t)
        b.add(A, f"{name}: float32 |x| ~ 1e-30, eps 1e-60", k_scale(name, "float32", 1e-30, eps=1e-60), timeout=t)

    # large mean offsets, float32 backward
    for name in ["batch_nc_numpy", "layer_nc_numpy", "batch_nchw_numpy", "batch_nc_numba"]:
        t = nb if "numba" in name else 20
        for off in (1e2, 1e4, 1e5, 1e6):
            b.add(A, f"{name}: float32 backward at mean {off:g}", k_offset(name, off), timeout=t)

    # per-call momentum and eps
    for v in [2, -1, float("nan"), float("inf"), "a", None, 1.5]:
        b.add(A, f"batch_nc_numpy: forward_train momentum={v!r}", k_percall("batch_nc_numpy", "forward_train",
                                                                            "momentum", v))
    for v in [2, float("nan")]:
        b.add(A, f"batch_nc_numba: forward_train momentum={v!r}", k_percall("batch_nc_numba", "forward_train",
                                                                            "momentum", v), timeout=nb)
    for v in [-1, float("nan"), float("inf"), "a", None, -1e-5]:
        b.add(A, f"batch_nc_numpy: forward_train eps={v!r}", k_percall("batch_nc_numpy", "forward_train", "eps", v))
    for v in [-1, float("nan")]:
        b.add(A, f"batch_nc_numpy: forward_eval eps={v!r}", k_percall("batch_nc_numpy", "forward_eval", "eps", v))
        b.add(A, f"batch_nc_numpy: backward_eval eps={v!r}", k_percall("batch_nc_numpy", "backward_eval", "eps", v))
        b.add(A, f"batch_nc_numba: forward_train eps={v!r}", k_percall("batch_nc_numba", "forward_train", "eps", v),
              timeout=nb)
    # RMS norm keeps no running statistics: forward_train takes no momentum at all
    b.add(A, "rms_nc_numpy: forward_train momentum=nan", k_percall("rms_nc_numpy", "forward_train", "momentum",
                                                                   float("nan")))
    # refusals after out was written
    for v in [None, "a"]:
        b.add(A, f"batch_nc_numpy: momentum={v!r} with out=", k_percall("batch_nc_numpy", "forward_train", "momentum",
                                                                        v, with_out=True))
    b.add(A, "batch_nc_numba: momentum=None with out=", k_percall("batch_nc_numba", "forward_train", "momentum",
                                                                  None, with_out=True), timeout=nb)
    b.add(A, "batch_nc_numpy: eps='a' with out=", k_percall("batch_nc_numpy", "forward_train", "eps", "a",
                                                           with_out=True))

    # aliasing
    def ov_train(part):
        def build(d, m, np):
            buf = np.full((16, 6), 7.0)
            out = buf
            g, bt, rm, rv = d["gamma"], d["beta"], d["rmu"].copy(), d["rvar"].copy()
            if part == "gamma":
                g = buf[0]
            elif part == "beta":
                bt = buf[1]
            elif part == "running_mu":
                rm = buf[2]
            elif part == "running_var":
                rv = buf[3]
            arrays = dict(gamma=g, beta=bt, running_mu=rm, running_var=rv, out=out)
            return (d["x"], g, bt, rm, rv), {"out": out}, arrays
        return build

    for part in ["gamma", "beta", "running_mu", "running_var"]:
        b.add(A, f"batch_nc_numpy: out overlaps {part}", k_overlap("batch_nc_numpy", "forward_train", ov_train(part)))
    for part in ["gamma", "running_var"]:
        b.add(A, f"batch_nc_numba: out overlaps {part}", k_overlap("batch_nc_numba", "forward_train", ov_train(part)),
              timeout=nb)

    def ov_x_strided(d, m, np):
        buf = np.random.default_rng(3).normal(size=(32, 6))
        x = buf[::2]
        out = buf[:16]
        return (x, d["gamma"], d["beta"]), {"out": out}, dict(x=x, buf=buf)
    b.add(A, "batch_nc_numpy: out overlaps a strided x", k_overlap("batch_nc_numpy", "forward_train", ov_x_strided))

    def ov_x_same(d, m, np):
        x = d["x"].copy()
        return (x, d["gamma"], d["beta"]), {"out": x}, dict(x=x)
    b.add(A, "batch_nc_numpy: out is x", k_overlap("batch_nc_numpy", "forward_train", ov_x_same))

    def ov_x_view(d, m, np):
        x = d["x"].copy()
        return (x, d["gamma"], d["beta"]), {"out": x.reshape(-1).reshape(x.shape)}, dict(x=x)
    b.add(A, "batch_nc_numpy: out is a view of x", k_overlap("batch_nc_numpy", "forward_train", ov_x_view))

    def ov_eval(d, m, np):
        buf = np.full((16, 6), 7.0)
        rv = buf[0]
        rv[:] = 1.0
        return (d["x"], d["gamma"], d["beta"], d["rmu"], rv), {"out": buf}, dict(running_var=rv, out=buf)
    b.add(A, "batch_nc_numpy: forward_eval out overlaps running_var", k_overlap("batch_nc_numpy", "forward_eval", ov_eval))

    def ov_back(part):
        def build(d, m, np):
            y, mu, istd = m.forward_train(d["x"], d["gamma"], d["beta"])
            buf = np.full((16, 6), 7.0)
            g, dy = d["gamma"], d["dy"]
            if part == "mu":
                buf[0] = mu
                mu = buf[0]
            elif part == "istd":
                buf[1] = istd
                istd = buf[1]
            elif part == "gamma":
                buf[2] = g
                g = buf[2]
            elif part == "dy":
                dy = buf
                buf = dy.reshape(-1).reshape(dy.shape)
            return (dy, d["x"], g, mu, istd), {"out": buf}, dict(mu=mu, istd=istd, gamma=g, dy=dy, out=buf)
        return build

    for part in ["mu", "istd", "gamma", "dy"]:
        b.add(A, f"batch_nc_numpy: backward out overlaps {part}", k_overlap("batch_nc_numpy", "backward", ov_back(part)))

    def ov_same_running(d, m, np):
        r = np.ones(6)
        return (d["x"], d["gamma"], d["beta"], r, r), {}, dict(running=r)
    b.add(A, "batch_nc_numpy: same array as running_mu and running_var",
          k_overlap("batch_nc_numpy", "forward_train", ov_same_running, keys=("running", "same", "overlap", "share")))
    b.add(A, "batch_nc_numba: same array as running_mu and running_var",
          k_overlap("batch_nc_numba", "forward_train", ov_same_running, keys=("running", "same", "overlap", "share")),
          timeout=nb)

    def ov_running_x(d, m, np):
        x = d["x"].copy()
        return (x, d["gamma"], d["beta"], x[0], x[1]), {}, dict(x=x)
    b.add(A, "batch_nc_numpy: running statistics are views of x",
          k_overlap("batch_nc_numpy", "forward_train", ov_running_x, keys=("running", "overlap", "share", "memory")))

    def ov_layer(d, m, np):
        buf = np.full((16, 6), 7.0)
        g = buf[0]
        g[:] = 1.0
        return (d["x"], g, d["beta"]), {"out": buf}, dict(gamma=g, out=buf)
    b.add(A, "layer_nc_numpy: out overlaps gamma", k_overlap("layer_nc_numpy", "forward_train", ov_layer))

    for count, mom in [(1, 0.1), (0, 0.1), (-3, 0.1), (16, float("nan")), (16, 0.1), (16, 0.0), (16, 1.0), (16, 1.5)]:
        b.add(A, f"batch_nc_numpy: update_running(count={count}, momentum={mom})", k_update_running(count, mom))

    def staged(m_name):
        def run():
            m = gen(m_name)
            d = data(kind_of(m_name))
            y, *saved = m.forward_train(d["x"], *params(m, d))
            a = m.backward(d["dy"], d["x"], d["gamma"], *saved)
            s = m.backward_staged(d["dy"], d["x"], d["gamma"])
            e = max(relerr(p, q) for p, q in zip(a, s))
            return ("correct" if e <= 1e-10 else "wrong"), f"compact vs staged {e:.0e}"
        return run
    for name in ["batch_nc_numpy", "group4_nchw_numpy", "rms_nc_numpy"]:
        b.add(A, f"{name}: backward_staged agrees with backward", staged(name))


# ----------------------------------------------------------------------------------------------------------------
# layers

def layer_attempt(make, expect, keys=(), check=None, watch=None):
    """make(L, np) -> result; watch(L, np) -> (layer, fn): arrays of the layer must be unchanged on refusal."""
    def run():
        import numpy as np
        from symbn import layers as L
        if watch is not None:
            layer, action = watch(L, np)
            state = {k: np.array(v, copy=True) for k, v in layer_arrays(layer).items()}
            try:
                action(layer)
            except Exception as e:  # noqa: BLE001
                changed = [k for k, v in layer_arrays(layer).items() if k not in state or not same(v, state[k])]
                if changed:
                    return "wrong", f"refused ({one_line(type(e).__name__ + ': ' + str(e), 80)}) but changed " \
                                    f"{', '.join(changed)} (half-loaded)"
                return exc_class(e, keys)
            if expect == "refuse":
                return "wrong", "accepted" + ("" if check is None else ": " + check(layer)[1])
            ok, detail = check(layer) if check else (True, "accepted")
            return ("correct" if ok else "wrong"), detail
        try:
            result = make(L, np)
        except Exception as e:  # noqa: BLE001
            return exc_class(e, keys)
        if expect == "refuse":
            return "wrong", "accepted: " + one_line(repr(result), 100)
        ok, detail = check(result) if check else (True, "accepted")
        return ("correct" if ok else "wrong"), detail
    return run


def layer_arrays(layer) -> dict:
    import numpy as np
    out = {}
    for k, v in vars(layer).items():
        if isinstance(v, np.ndarray):
            out[k] = v
    return out


def bn_train_check(layout, shape, keras=False, steps=3, dtype="float64"):
    def make(L, np):
        c = shape[1] if layout != "NHWC" else shape[-1]
        bn = (L.BatchNorm.keras(c, layout) if keras else L.BatchNorm(c, layout, dtype=dtype))
        return bn

    def check(bn):
        import numpy as np
        kind = {"NC": KINDS["batch_nc"], "NCHW": KINDS["batch_nchw"], "NHWC": KINDS["batch_nhwc"]}[bn.spec.layout]
        eps, mom = (1e-3, 0.99) if keras else (1e-5, 0.1)
        rng = np.random.default_rng(5)
        c = shape[kind["ch"]]
        rmu, rvar = np.zeros(c), np.ones(c)
        errs = []
        for _ in range(steps):
            x = rng.normal(2.0, 3.0, size=shape).astype(dtype)
            dy = rng.normal(size=shape).astype(dtype)
            y = bn.forward(x)
            dx = bn.backward(dy)
            ref = ref_forward(kind, x, bn.gamma, bn.beta, eps)
            rb = ref_backward(kind, dy, x, bn.gamma, eps)
            m = math.prod(shape[a] for a in kind["red"])
            if keras:
                rmu, rvar = mom * rmu + (1 - mom) * ref["mu"], mom * rvar + (1 - mom) * ref["var"]
            else:
                rmu, rvar = ref_running(rmu, rvar, ref["mu"], ref["var"], m, mom)
            errs += [relerr(y, ref["y"]), relerr(dx, rb["dx"]), relerr(bn.dgamma, rb["dgamma"])]
        errs += [relerr(bn.running_mean, rmu), relerr(bn.running_var, rvar)]
        bn.eval()
        x = rng.normal(size=shape).astype(dtype)
        errs.append(relerr(bn.forward(x), ref_eval_forward(kind, x, bn.gamma, bn.beta, rmu, rvar, eps)))
        tol = 1e-9 if dtype == "float64" else 1e-4
        return all(e <= tol for e in errs), "max error %.0e" % max(errs)
    return make, check


def norm_check(cls_name, ctor, x_shape, kind_fn):
    def make(L, np):
        return ctor(L)

    def check(layer):
        import numpy as np
        rng = np.random.default_rng(6)
        x = rng.normal(1.0, 2.0, size=x_shape)
        dy = rng.normal(size=x_shape)
        if getattr(layer, "gamma", None) is not None:
            layer.gamma[...] = rng.uniform(0.5, 1.5, layer.gamma.shape)
        y = layer.forward(x)
        dx = layer.backward(dy)
        ry, rdx = kind_fn(x, dy, layer)
        e1, e2 = relerr(y, ry), relerr(dx, rdx)
        return e1 <= 1e-9 and e2 <= 1e-9, f"{cls_name}: y {e1:.0e}, dx {e2:.0e}"
    return make, check


def _ln_ref(x, dy, layer, rms=False):
    import numpy as np
    k = len(layer.normalized_shape)
    n = math.prod(layer.normalized_shape)
    x2, dy2 = x.reshape(-1, n), dy.reshape(-1, n)
    g = layer.gamma.reshape(-1)
    kind = KINDS["rms_nc"] if rms else KINDS["layer_nc"]
    b = None if rms else layer.beta.reshape(-1)
    y = ref_forward(kind, x2, g, b)["y"].reshape(x.shape)
    dx = ref_backward(kind, dy2, x2, g)["dx"].reshape(x.shape)
    del k, np
    return y, dx


def build_layers(b: Builder):
    A = "layers"
    R = "refuse"
    ctors = [
        ("BatchNorm(0)", lambda L, np: L.BatchNorm(0), ["num_features"]),
        ("BatchNorm(-1)", lambda L, np: L.BatchNorm(-1), ["num_features"]),
        ("BatchNorm('4')", lambda L, np: L.BatchNorm("4"), ["num_features"]),
        ("BatchNorm(4.0)", lambda L, np: L.BatchNorm(4.0), ["num_features"]),
        ("BatchNorm(True)", lambda L, np: L.BatchNorm(True), ["num_features"]),
        ("BatchNorm(None)", lambda L, np: L.BatchNorm(None), ["num_features"]),
        ("BatchNorm(4, layout='nchw')", lambda L, np: L.BatchNorm(4, "nchw"), ["layout"]),
        ("BatchNorm(4, layout=None)", lambda L, np: L.BatchNorm(4, None), ["layout"]),
        ("BatchNorm(4, eps=-1)", lambda L, np: L.BatchNorm(4, eps=-1), ["eps"]),
        ("BatchNorm(4, eps=nan)", lambda L, np: L.BatchNorm(4, eps=float("nan")), ["eps"]),
        ("BatchNorm(4, eps='a')", lambda L, np: L.BatchNorm(4, eps="a"), ["eps"]),
        ("BatchNorm(4, momentum=2)", lambda L, np: L.BatchNorm(4, momentum=2), ["momentum"]),
        ("BatchNorm(4, momentum=nan)", lambda L, np: L.BatchNorm(4, momentum=float("nan")), ["momentum"]),
        ("BatchNorm(4, running='torch')", lambda L, np: L.BatchNorm(4, running="torch"), ["running"]),
        ("BatchNorm(4, running=['pytorch'])", lambda L, np: L.BatchNorm(4, running=["pytorch"]), ["running"]),
        ("BatchNorm(4, backend='torch')", lambda L, np: L.BatchNorm(4, backend="torch"), ["backend"]),
        ("BatchNorm(4, dtype=np.int32)", lambda L, np: L.BatchNorm(4, dtype=np.int32), ["dtype"]),
        ("BatchNorm(4, dtype='nonsense')", lambda L, np: L.BatchNorm(4, dtype="nonsense"), ["dtype", "data type"]),
        ("BatchNorm(4, dtype=np.float16)", lambda L, np: L.BatchNorm(4, dtype=np.float16), ["dtype"]),
        ("BatchNorm(4, affine='False')", lambda L, np: L.BatchNorm(4, affine="False"), ["affine"]),
        ("LayerNorm(0)", lambda L, np: L.LayerNorm(0), ["normalized_shape"]),
        ("LayerNorm((4, 0))", lambda L, np: L.LayerNorm((4, 0)), ["normalized_shape"]),
        ("LayerNorm(())", lambda L, np: L.LayerNorm(()), ["normalized_shape"]),
        ("LayerNorm(1)", lambda L, np: L.LayerNorm(1), ["normalized_shape"]),
        ("LayerNorm(4.0)", lambda L, np: L.LayerNorm(4.0), ["normalized_shape"]),
        ("LayerNorm('4')", lambda L, np: L.LayerNorm("4"), ["normalized_shape"]),
        ("GroupNorm(3, 4)", lambda L, np: L.GroupNorm(3, 4), ["num_channels", "num_groups"]),
        ("GroupNorm(0, 4)", lambda L, np: L.GroupNorm(0, 4), ["num_groups"]),
        ("GroupNorm(2, 4, eps=-1)", lambda L, np: L.GroupNorm(2, 4, eps=-1), ["eps"]),
        ("InstanceNorm(4, layout='NC')", lambda L, np: L.InstanceNorm(4, "NC"), ["layout"]),
        ("RMSNorm(4, eps=0)", lambda L, np: L.RMSNorm(4, eps=0), ["eps"]),
        ("RMSNorm(4, elementwise_affine='no')", lambda L, np: L.RMSNorm(4, elementwise_affine="no"), ["affine"]),
    ]
    for desc, make, keys in ctors:
        b.add(A, desc, layer_attempt(make, R, keys))

    def fwd(shape_or_x, layer_fn=lambda L: L.BatchNorm(4), train=True):
        def watch(L, np):
            layer = layer_fn(L)
            if not train:
                layer.eval()
            x = shape_or_x(np)
            return layer, lambda lay: lay.forward(x)
        return watch

    for desc, xfn, keys in [
        ("BatchNorm(4) x (8, 5)", lambda np: np.ones((8, 5)), ["channel", "x"]),
        ("BatchNorm(4) x 3-D", lambda np: np.ones((8, 4, 2)), ["x", "2-d", "dimension"]),
        ("BatchNorm(4) x int", lambda np: np.ones((8, 4), int), ["x", "dtype", "float"]),
        ("BatchNorm(4) x complex", lambda np: np.ones((8, 4), complex), ["x", "dtype", "float", "complex"]),
        ("BatchNorm(4) x one row in training", lambda np: np.ones((1, 4)), ["x", "more than 1"]),
        ("BatchNorm(4) x strings", lambda np: np.array([["a"] * 4] * 8), ["x", "dtype", "float"]),
    ]:
        b.add(A, desc, layer_attempt(None, R, keys, watch=fwd(xfn)))
    b.add(A, "LayerNorm(4) x (4,) without a batch axis", layer_attempt(
        None, R, ["x", "leading"], watch=fwd(lambda np: np.ones(4), lambda L: L.LayerNorm(4))))

    def bwd_bad(L, np):
        bn = L.BatchNorm(4)
        bn.forward(np.random.default_rng(0).normal(size=(8, 4)))
        return bn, lambda lay: lay.backward(np.ones((8, 5)))
    b.add(A, "BatchNorm backward dy wrong shape", layer_attempt(None, R, ["dy"], watch=bwd_bad))

    def mutated(attr, value):
        def watch(L, np):
            bn = L.BatchNorm(4)
            setattr(bn, attr, value)
            x = np.random.default_rng(0).normal(size=(8, 4))
            return bn, lambda lay: lay.forward(x)

        def check(bn):
            import numpy as np
            return False, f"{attr}={value!r} used: running stats finite={bool(np.isfinite(bn.running_var).all())}"
        return watch, check

    for attr, value in [("momentum", 2.0), ("momentum", float("nan")), ("eps", -1.0)]:
        w, c = mutated(attr, value)
        b.add(A, f"BatchNorm with layer.{attr} = {value!r} then forward", layer_attempt(None, R, [attr], c, watch=w))

    # correct use
    for desc, layout, shape, keras, dtype in [
        ("BatchNorm NC pytorch, 3 steps + eval", "NC", (16, 4), False, "float64"),
        ("BatchNorm NC keras, 3 steps + eval", "NC", (16, 4), True, "float64"),
        ("BatchNorm NCHW, 3 steps + eval", "NCHW", (4, 3, 5, 6), False, "float64"),
        ("BatchNorm NHWC, 3 steps + eval", "NHWC", (4, 5, 6, 3), False, "float64"),
        ("BatchNorm NC float32, 3 steps + eval", "NC", (16, 4), False, "float32"),
    ]:
        make, check = bn_train_check(layout, shape, keras, dtype=dtype)
        b.add(A, desc, layer_attempt(make, "ok", [], check))
    make, check = norm_check("LayerNorm", lambda L: L.LayerNorm((3, 4)), (5, 3, 4), lambda x, dy, la: _ln_ref(x, dy, la))
    b.add(A, "LayerNorm((3, 4)) on (5, 3, 4)", layer_attempt(make, "ok", [], check))
    make, check = norm_check("RMSNorm", lambda L: L.RMSNorm(6), (2, 5, 6), lambda x, dy, la: _ln_ref(x, dy, la, True))
    b.add(A, "RMSNorm(6) on (2, 5, 6)", layer_attempt(make, "ok", [], check))

    def gn_ref(x, dy, la):
        k = KINDS["group4_nchw"]
        return ref_forward(k, x, la.gamma, la.beta)["y"], ref_backward(k, dy, x, la.gamma)["dx"]
    make, check = norm_check("GroupNorm", lambda L: L.GroupNorm(4, 8), (3, 8, 3, 4), gn_ref)
    b.add(A, "GroupNorm(4, 8) on (3, 8, 3, 4)", layer_attempt(make, "ok", [], check))

    def in_ref(x, dy, la):
        k = KINDS["instance_nchw"]
        return ref_forward(k, x, la.gamma, la.beta)["y"], ref_backward(k, dy, x, la.gamma)["dx"]
    make, check = norm_check("InstanceNorm", lambda L: L.InstanceNorm(4, affine=True), (3, 4, 5, 6), in_ref)
    b.add(A, "InstanceNorm(4, affine=True) on (3, 4, 5, 6)", layer_attempt(make, "ok", [], check))

    def list_input(L, np):
        bn = L.BatchNorm(4)
        x = np.random.default_rng(0).normal(size=(8, 4))
        return bn, bn.forward(x.tolist()), x

    def list_check(r):
        bn, y, x = r
        ref = ref_forward(KINDS["batch_nc"], x, bn.gamma, bn.beta)["y"]
        e = relerr(y, ref)
        return e <= 1e-10, f"list input: y {e:.0e}"
    b.add(A, "BatchNorm forward on nested lists", layer_attempt(list_input, "ok", [], list_check))

    # state dicts
    def state_watch(edit, layer_fn=lambda L: L.BatchNorm(4)):
        def watch(L, np):
            layer = layer_fn(L)
            state = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
            state["gamma"] = np.full(4, 2.0)
            state = edit(state, np)
            return layer, lambda lay: lay.load_state_dict(state)
        return watch

    def bad_state_check(layer):
        return False, "bad state loaded: " + one_line(repr({k: v.tolist() for k, v in layer.state_dict().items()}), 90)

    for desc, edit, keys, expect in [
        ("one entry with a bad shape", lambda s, np: {**s, "running_var": np.ones(5)}, ["running_var", "shape"], R),
        ("a missing key", lambda s, np: {k: v for k, v in s.items() if k != "beta"}, ["beta", "missing"], R),
        ("an unexpected key", lambda s, np: {**s, "extra": np.ones(4)}, ["extra", "unexpected"], R),
        ("running_var strings (last entry bad)", lambda s, np: {**s, "running_var": np.array(["a", "b", "c", "d"])},
         ["running_var"], R),
        ("complex gamma", lambda s, np: {**s, "gamma": np.full(4, 1 + 2j)}, ["gamma", "complex"], R),
        ("negative running_var", lambda s, np: {**s, "running_var": np.full(4, -1.0)}, ["running_var", "negative"], R),
        ("NaN running_var", lambda s, np: {**s, "running_var": np.full(4, np.nan)}, ["running_var", "nan"], R),
        ("running_var a 0-d scalar", lambda s, np: {**s, "running_var": np.array(1.0)}, ["running_var", "shape"], R),
        ("object-dtype running_mean", lambda s, np: {**s, "running_mean": np.array([None] * 4, dtype=object)},
         ["running_mean"], R),
        ("complex running_mean", lambda s, np: {**s, "running_mean": np.zeros(4) + 0.5j},
         ["running_mean", "complex"], R),
        ("values as lists (valid)", lambda s, np: {k: v.tolist() for k, v in s.items()}, [], "ok"),
    ]:
        check = (lambda layer: (layer.gamma[0] == 2.0, "loaded from lists")) if expect == "ok" else bad_state_check
        b.add(A, f"BatchNorm load_state_dict: {desc}", layer_attempt(None, expect, keys, check, watch=state_watch(edit)))

    def none_state(L, np):
        layer = L.BatchNorm(4)
        return layer, lambda lay: lay.load_state_dict(None)
    b.add(A, "BatchNorm load_state_dict(None)", layer_attempt(None, R, ["state"], watch=none_state))

    def ln_into_bn(L, np):
        layer = L.BatchNorm(4)
        st = L.LayerNorm(4).state_dict()
        return layer, lambda lay: lay.load_state_dict(st)
    b.add(A, "BatchNorm load_state_dict from a LayerNorm", layer_attempt(None, R, ["running", "missing"],
                                                                         watch=ln_into_bn))

    # .npz files
    def npz_watch(prepare, keys):
        def watch(L, np):
            layer = L.BatchNorm(4)
            path = os.path.join(scratch("npz"), "state.npz")
            prepare(L, np, path)
            return layer, lambda lay: lay.load(path)
        return watch

    def save_other(L, np, path):
        bn = L.BatchNorm(4)
        bn.gamma[...] = 3.0
        bn.save(path)

    def truncated(L, np, path):
        save_other(L, np, path)
        data_ = open(path, "rb").read()
        open(path, "wb").write(data_[: len(data_) // 2])

    def empty(L, np, path):
        open(path, "wb").close()

    def pickled(L, np, path):
        np.savez(path, gamma=np.array([object()] * 4, dtype=object), beta=np.zeros(4), running_mean=np.zeros(4),
                 running_var=np.ones(4), num_batches_tracked=np.zeros((), np.int64))

    def npy(L, np, path):
        np.save(path[:-4] + ".npy", np.ones(4))
        os.replace(path[:-4] + ".npy", path)

    def garbage_zip(L, np, path):
        save_other(L, np, path)
        data_ = bytearray(open(path, "rb").read())
        for i in range(len(data_) // 3, len(data_) // 3 + 40):
            data_[i] ^= 0x5A
        open(path, "wb").write(bytes(data_))

    def roundtrip_check(layer):
        return bool((layer.gamma == 3.0).all()), "gamma restored from the file"

    b.add(A, "BatchNorm save/load round trip", layer_attempt(None, "ok", [], roundtrip_check,
                                                             watch=npz_watch(save_other, [])))
    for desc, prep, keys in [("truncated .npz", truncated, ["npz", "zip", "file", "truncated", "corrupt", "state"]),
                             ("empty file", empty, ["npz", "file", "empty", "state"]),
                             ("object array (pickle)", pickled, ["pickle", "object"]),
                             (".npy content in a .npz name", npy, ["npz", "state", "file"]),
                             ("corrupted bytes inside the .npz", garbage_zip, ["npz", "zip", "file", "corrupt", "crc",
                                                                              "state"])]:
        b.add(A, f"BatchNorm load: {desc}", layer_attempt(None, R, keys, watch=npz_watch(prep, keys)))



# ----------------------------------------------------------------------------------------------------------------
# files, CLI, cache (local: each attempt spawns the CLI or a Python subprocess)

LOAD_BATCH_NC = """
import json, numpy as np, symbn
m = symbn.load(symbn.preset("batch", "NC"), backend="numpy")
x = np.random.default_rng(0).normal(size=(16, 6))
y = m.forward_train(x, np.ones(6), np.zeros(6))[0]
ref = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
print("PATH=" + m.__file__)
print("ERR=%r" % float(np.abs(y - ref).max()))
"""


def load_verdict(rc, out, err, k=None, keys=("cache", "symbn_cache")):
    if k is not None and fired(k):
        return "security", "injected code in the cache ran (marker file created)"
    v = cli_verdict(rc, out, err, keys)
    if v is not None and v[0] == "traceback" and "Traceback" in err:
        last = err.strip().splitlines()[-1]
        exc = last.split(":")[0].rsplit(".", 1)[-1]
        if exc in ("SpecError", "ExpressionError", "GraphError", "TypeError", "ValueError", "KeyError",
                   "FileExistsError", "OverwriteError", "OSError") and any(kk.lower() in last.lower() for kk in keys):
            return "clear_error", one_line(last)
        return "traceback", one_line(last)
    if v is not None:
        return v
    m = re.search(r"ERR=(\S+)", out)
    if not m:
        return "wrong", "no result"
    e = float(m.group(1))
    return ("correct" if e < 1e-10 else "wrong"), f"forward error {e:.1e}"


def f_cache_edit(k, edit, desc):
    def run():
        cache = scratch("cache")
        extra = {"SYMBN_CACHE": cache}
        try:
            rc, out, err = pyrun(LOAD_BATCH_NC, extra=extra)
            path = re.search(r"PATH=(.*)", out).group(1).strip()
            edit(path, k)
            clear_marker(k)
            rc, out, err = pyrun(LOAD_BATCH_NC, extra=extra)
        except Hang as h:
            return "hang", str(h)
        except AttributeError:
            return "traceback", "first load failed: " + one_line(err.strip().splitlines()[-1] if err.strip() else "")
        return load_verdict(rc, out, err, k)
    return run


def _truncate(path, k):
    text = open(path).read()
    open(path, "w").write(text[: len(text) // 2])


def _empty(path, k):
    open(path, "w").close()


def _append_payload(path, k):
    with open(path, "a") as f:
        f.write(f"\n{payload(k)}\n")


def _zero_forward(path, k):
    with open(path, "a") as f:
        f.write("\n_orig_forward_train = forward_train\n"
                "def forward_train(x, *a, **kw):\n"
                "    r = _orig_forward_train(x, *a, **kw)\n"
                "    return (r[0] * 0,) + tuple(r[1:])\n")


def _dir_instead(path, k):
    os.unlink(path)
    os.mkdir(path)


def f_cache_env(value_fn, desc, keys=("symbn_cache", "cache")):
    def run():
        base = scratch("cacheenv")
        value, cleanup = value_fn(base)
        try:
            rc, out, err = pyrun(LOAD_BATCH_NC, cwd=base, extra={"SYMBN_CACHE": value})
        except Hang as h:
            return "hang", str(h)
        finally:
            cleanup()
        if value and os.path.isdir(os.path.join(base, "rel_cache")) is False and value == "rel_cache":
            return "wrong", "relative SYMBN_CACHE not used"
        return load_verdict(rc, out, err, None, keys)
    return run


def f_poison_across(k):
    def run():
        cache = scratch("poison")
        e = f'x - mean(x) # """ and {payload(k)} or """'
        code = ("import symbn, sys\n"
                "s = symbn.make(sys.argv[1], axes=(1,), param_axes=())\n"
                "m = symbn.load(s, backend='numpy')\n"
                "print('LOADED')\n")
        try:
            run_proc([sys.executable, "-c", code, e], scratch("cwd"), {"SYMBN_CACHE": cache}, 60)
            clear_marker(k)
            rc, out, err = run_proc([sys.executable, "-c", code, "x - mean(x)"], scratch("cwd"),
                                    {"SYMBN_CACHE": cache}, 60)
        except Hang as h:
            return "hang", str(h)
        if fired(k):
            return "security", "poisoned cache: a clean expression in a new process ran the injected code"
        if rc != 0:
            return cli_verdict(rc, out, err) or ("traceback", "load failed")
        return "correct", "the clean expression got a clean module"
    return run


def f_concurrent():
    def run():
        cache = scratch("conc")
        procs = [subprocess.Popen([sys.executable, "-c", LOAD_BATCH_NC], cwd=scratch("cwd"),
                                  env=child_env({"SYMBN_CACHE": cache}), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(3)]
        res = [p.communicate(timeout=120) for p in procs]
        for p, (o, e) in zip(procs, res):
            v = load_verdict(p.returncode, o.decode(), e.decode())
            if v[0] != "correct":
                return v
        if leftovers(cache):
            return "wrong", f"temporary files left: {leftovers(cache)[:2]}"
        return "correct", "three processes loaded the same spec"
    return run


NUMBA_RUN = """
import importlib.util, sys, numpy as np
spec = importlib.util.spec_from_file_location("attack_numba_mod", sys.argv[1])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
x = np.random.default_rng(0).normal(size=(16, 6))
g = np.ones(6)
y, irms = m.forward_train(x, g)
dx = m.backward(np.ones_like(x), x, g, irms)[0]
ref = x / np.sqrt((x * x).mean(1, keepdims=True) + 1e-5)
print("ERR=%r" % float(np.abs(y - ref).max()))
"""


def f_numba_cache(state, variant):
    """Corrupt Numba cache files beside a generated module: recompiled, never fatal."""
    def run():
        try:
            if "dir" not in state:
                d = scratch("nbcache")
                shutil.copy2(os.path.join(env("TREE"), "generated", "rms_nc_numba.py"), d)
                rc, out, err = run_proc([sys.executable, "-c", NUMBA_RUN, os.path.join(d, "rms_nc_numba.py")], d,
                                        {"NUMBA_CACHE_DIR": None}, 240)
                state["dir"] = d
                if rc != 0:
                    return "traceback", "first compile failed: " + one_line(err.strip().splitlines()[-1])
            d = state["dir"]
            pc = os.path.join(d, "__pycache__")
            files = [os.path.join(pc, f) for f in os.listdir(pc)] if os.path.isdir(pc) else []
            nbi = [f for f in files if f.endswith(".nbi")]
            nbc = [f for f in files if f.endswith(".nbc")]
            if not nbi:
                return "wrong", "no Numba cache files were written (cache=True expected)"
            targets = {"garbage index": nbi, "garbage data": nbc, "empty files": nbi + nbc}[variant]
            for f in targets:
                with open(f, "wb") as fh:
                    fh.write(b"" if variant == "empty files" else b"\x80\x04garbage\x00" * 7)
            rc, out, err = run_proc([sys.executable, "-c", NUMBA_RUN, os.path.join(d, "rms_nc_numba.py")], d,
                                    {"NUMBA_CACHE_DIR": None}, 240)
        except Hang as h:
            return "hang", str(h)
        if "Traceback" in err:
            return "traceback", f"Numba cache ({variant}): " + one_line(err.strip().splitlines()[-1])
        return load_verdict(rc, out, err)
    return run


def gen_args(spec_args=("batch", "--layout", "NC"), backend="numpy", out="out", more=()):
    return ["generate", *spec_args, "--backend", backend, "-o", out, *more]


def f_umask(umask, expect_mode, more=(), spec_args=("batch", "--layout", "NC"), backend="numpy"):
    def run():
        d = scratch("umask")
        try:
            rc, out, err = cli(gen_args(spec_args, backend=backend, more=more), cwd=d, umask=umask)
        except Hang as h:
            return "hang", str(h)
        v = cli_verdict(rc, out, err)
        if v is not None:
            return v
        files = [os.path.join(d, "out", f) for f in os.listdir(os.path.join(d, "out")) if f.endswith(".py")]
        modes = {oct(os.stat(f).st_mode & 0o777) for f in files}
        if modes != {oct(expect_mode)}:
            return "wrong", f"umask {umask:03o}: file mode {', '.join(sorted(modes))}, expected {expect_mode:o}"
        return "correct", f"mode {expect_mode:o}"
    return run


def f_regen_mode():
    def run():
        d = scratch("regen")
        try:
            cli(gen_args(more=("--name", "mymod")), cwd=d)
            path = os.path.join(d, "out", "mymod.py")
            os.chmod(path, 0o644)
            rc, out, err = cli(gen_args(("layer", "--layout", "NC"), more=("--name", "mymod")), cwd=d)
        except Hang as h:
            return "hang", str(h)
        v = cli_verdict(rc, out, err)
        if v is not None:
            return v
        if "layer" not in open(path).read(100):
            return "wrong", "not regenerated"
        mode = os.stat(path).st_mode & 0o777
        if mode != 0o644:
            return "wrong", f"regenerating changed mode 0644 to {mode:04o}"
        return "correct", "mode 0644 kept"
    return run


def f_cache_mode():
    def run():
        cache = scratch("cmode")
        try:
            rc, out, err = pyrun(LOAD_BATCH_NC, extra={"SYMBN_CACHE": cache}, umask=0o022)
        except Hang as h:
            return "hang", str(h)
        v = load_verdict(rc, out, err)
        if v[0] != "correct":
            return v
        path = re.search(r"PATH=(.*)", out).group(1).strip()
        mode = os.stat(path).st_mode & 0o777
        if mode != 0o644:
            return "wrong", f"cached module mode {mode:04o} under umask 022 (expected 0644)"
        return "correct", "cached module 0644"
    return run


def f_gen_fail(setup, keys, check_after=None):
    """A generate that must fail cleanly: one-line error, non-zero exit, no temporary file left."""
    def run():
        d = scratch("genfail")
        out_arg, cleanup = setup(d)
        try:
            rc, out, err = cli(gen_args(out=out_arg), cwd=d)
        except Hang as h:
            cleanup()
            return "hang", str(h)
        finally:
            pass
        left = leftovers(d)
        cleanup()
        if left:
            return "wrong", f"temporary file left behind: {os.path.relpath(left[0], d)}"
        v = cli_verdict(rc, out, err, keys)
        if v is None:
            if check_after:
                return check_after(d)
            return "wrong", "exit 0 although the output could not be written"
        return v
    return run


def _ro_dir(d):
    o = os.path.join(d, "ro")
    os.mkdir(o)
    immutable(o, True)
    if can_write(o):
        immutable(o, False)
        return o, lambda: None
    return o, lambda: immutable(o, False)


def _parent_file(d):
    f = os.path.join(d, "afile")
    open(f, "w").write("x")
    return os.path.join(f, "sub"), lambda: None


def _out_is_file(d):
    f = os.path.join(d, "afile")
    open(f, "w").write("x")
    return f, lambda: None


def _target_dir(d):
    o = os.path.join(d, "out")
    os.makedirs(os.path.join(o, "batch_nc_numpy.py"))
    return o, lambda: None


def _dev_null(d):
    return "/dev/null/out", lambda: None


def f_overwrite(prepare, expect, keys=("refusing", "overwrite", "generated", "edited")):
    """expect: 'refuse' (the file must be unchanged) or 'overwrite' (--force: the file must be replaced)."""
    def run():
        d = scratch("over")
        o = os.path.join(d, "out")
        os.makedirs(o)
        path = os.path.join(o, "batch_nc_numpy.py")
        more = prepare(d, path)
        before = open(path, "rb").read() if os.path.exists(path) else None
        try:
            rc, out, err = cli(gen_args(out=o, more=more), cwd=d)
        except Hang as h:
            return "hang", str(h)
        after = open(path, "rb").read() if os.path.exists(path) else None
        if leftovers(d):
            return "wrong", "temporary file left behind"
        v = cli_verdict(rc, out, err, keys)
        if expect == "refuse":
            if after != before:
                return "wrong", "file changed" + ("" if v is None else " although refused")
            if v is None:
                return "wrong", "exit 0 for a refused overwrite"
            return v
        if v is not None:
            return v
        if after is None or not after.startswith(b"# Generated by symbn"):
            return "wrong", "file not overwritten"
        return "correct", "overwritten with --force" if "--force" in more else "written"
    return run


def _foreign(d, path):
    open(path, "w").write("my own code\n")
    return ()


def _foreign_force(d, path):
    open(path, "w").write("my own code\n")
    return ("--force",)


def _edited(d, path):
    cli(gen_args(out=os.path.dirname(path)), cwd=d)
    with open(path, "a") as f:
        f.write("# my edit\n")
    return ()


def _symlink_victim(d, path):
    victim = os.path.join(d, "victim.txt")
    open(victim, "w").write("precious\n")
    os.symlink(victim, path)
    return ()


def _unchanged(d, path):
    cli(gen_args(out=os.path.dirname(path)), cwd=d)
    return ()


def f_banner_injection(k):
    """An output folder whose name holds a newline and code: the banner line must not turn it into code."""
    def run():
        d = scratch("banner")
        code = (f'__import__("pathlib").Path(chr(47).join(["", "tmp", "symbn_attack_marker_{env("TAG")}_{k}"]))'
                '.touch()')
        o = os.path.join(d, f"out\n{code}#")
        clear_marker(k)
        try:
            rc, out, err = cli(gen_args(out=o), cwd=d)
        except Hang as h:
            return "hang", str(h)
        v = cli_verdict(rc, out, err, ("output", "name", "newline", "path"))
        if v is not None:
            return v
        path = os.path.join(o, "batch_nc_numpy.py")
        text = open(path).read()
        why = breakout(text)
        try:
            run_proc([sys.executable, "-c", "import importlib.util,sys; s=importlib.util.spec_from_file_location("
                      "'m', sys.argv[1]); m=importlib.util.module_from_spec(s); s.loader.exec_module(m)", path], d,
                     None, 60)
        except Hang:
            pass
        if fired(k):
            return "security", "-o with a newline: banner comment line became code (marker file created on import)"
        if why:
            return "security", "-o with a newline: " + why
        return "correct", "banner stayed a comment"
    return run


def f_name(name, expect_ok):
    def run():
        d = scratch("name")
        try:
            rc, out, err = cli(gen_args(out="out", more=("--name", name)), cwd=d)
        except Hang as h:
            return "hang", str(h)
        v = cli_verdict(rc, out, err, ("name",))
        if v is not None:
            if expect_ok and v[0] == "clear_error":
                return "clear_error", "refused: " + v[1]
            return v
        if not expect_ok:
            return "wrong", f"--name {name!r} accepted"
        files = os.listdir(os.path.join(d, "out"))
        if files != [name + ".py"]:
            return "wrong", f"wrote {files}"
        return "correct", f"wrote {name}.py"
    return run


def f_check(setup, expect, keys=("check", "trust", "banner", "symbn", "not", "file", "path")):
    """expect: 'refuse' (untrusted/invalid input: a clear refusal), 'pass' (rc 0), 'fail' (rc 1 with FAIL lines)."""
    def run():
        d = scratch("check")
        k = setup["k"]
        path, trust = setup["make"](d, k)
        clear_marker(k)
        args = ["check", path] + (TRUST_FLAG if trust and TRUST_FLAG else [])
        try:
            rc, out, err = cli(args, cwd=d, timeout=120)
        except Hang as h:
            return "hang", str(h)
        if fired(k):
            return "security", "symbn check imported (ran) an untrusted file without a trust flag"
        v = cli_verdict(rc, out, err, keys)
        if expect == "refuse":
            if v is None:
                return "wrong", "exit 0 for an invalid/untrusted file"
            if rc == 1 and "FAIL" in out:
                return "wrong", "ran checks on an invalid file"
            return v
        if expect == "pass":
            if rc == 0:
                return "correct", "all checks ok"
            if "FAIL" in out:
                fails = [one_line(line, 70) for line in out.splitlines() if "FAIL" in line]
                return "wrong", "fails a correct kernel: " + "; ".join(fails[:2])
            return v or ("wrong", f"exit {rc}")
        # expect == "fail": a mutated kernel must be caught
        if rc == 1 and "FAIL" in out and "Traceback" not in err:
            return "correct", "mutation detected"
        if v is not None and v[0] != "clear_error":
            return v
        if rc == 0:
            return "wrong", "mutated kernel passes every check"
        return v
    return run


TRUST_FLAG: list[str] = []


def _chk_missing(d, k):
    return os.path.join(d, "missing.py"), False


def _chk_text(d, k):
    p = os.path.join(d, "notes.txt")
    open(p, "w").write("just some notes\n")
    return p, False


def _chk_dir(d, k):
    p = os.path.join(d, "adir")
    os.mkdir(p)
    return p, False


def _chk_plain_py(d, k):
    p = os.path.join(d, "plain.py")
    open(p, "w").write(f"{payload(k)}\n")
    return p, False


def _chk_fake_banner(d, k):
    src = open(os.path.join(env("TREE"), "generated", "batch_nc_numpy.py")).read()
    p = os.path.join(d, "fake.py")
    open(p, "w").write(src + f"\n{payload(k)}\n")
    return p, False


def _chk_empty_py(d, k):
    p = os.path.join(d, "empty.py")
    open(p, "w").close()
    return p, True


def _chk_syntax(d, k):
    src = open(os.path.join(env("TREE"), "generated", "batch_nc_numpy.py")).read()
    p = os.path.join(d, "broken.py")
    open(p, "w").write(src[: len(src) // 2])
    return p, True


def _chk_catalog(name):
    def make(d, k):
        return os.path.join(env("TREE"), "generated", name), False
    return make


def _chk_generated(spec_args):
    def make(d, k):
        rc, out, err = cli(["generate", *spec_args, "--backend", "numpy", "--name", "m", "-o", d], cwd=d)
        if rc != 0:
            raise RuntimeError("generate failed: " + one_line(err.strip()[-200:]))
        return os.path.join(d, "m.py"), False
    return make


def _chk_mutated(code):
    def make(d, k):
        src = open(os.path.join(env("TREE"), "generated", "batch_nc_numpy.py")).read()
        p = os.path.join(d, "mutated.py")
        open(p, "w").write(src + "\n" + code)
        return p, True
    return make


MUT_DX = ("_orig_backward = backward\n"
          "def backward(*a, **kw):\n"
          "    r = _orig_backward(*a, **kw)\n"
          "    return (r[0] * 1.001,) + tuple(r[1:])\n")
MUT_DGAMMA = ("_orig_backward = backward\n"
              "def backward(*a, **kw):\n"
              "    r = _orig_backward(*a, **kw)\n"
              "    return (r[0], r[1] + 1e-3, r[2])\n")
MUT_DX_SHIFT = ("_orig_backward = backward\n"
                "def backward(*a, **kw):\n"
                "    r = _orig_backward(*a, **kw)\n"
                "    return (r[0] + 1e-4,) + tuple(r[1:])\n")


def f_check_safe(make):
    def run():
        try:
            return make()
        except Hang as h:
            return "hang", str(h)
        except RuntimeError as e:  # setup failed (e.g. generate refused): report as a traceback of the setup
            return "traceback", one_line(e)
    return run


def f_cli(args, expect, keys=(), check_out=None, timeout=60):
    """expect: 'refuse' or 'ok' (check_out(out) -> (ok, detail))."""
    def run():
        try:
            rc, out, err = cli(args, timeout=timeout)
        except Hang as h:
            return "hang", str(h)
        v = cli_verdict(rc, out, err, keys)
        if expect == "refuse":
            return v if v is not None else ("wrong", "exit 0: " + one_line(out[-80:]))
        if v is not None:
            return v
        ok, detail = check_out(out) if check_out else (True, "exit 0")
        return ("correct" if ok else "wrong"), detail
    return run


def f_docs_umask():
    def run():
        d = scratch("docsmode")
        try:
            rc, out, err = cli(["derive", "layer", "--layout", "NC", "--format", "md", "-o", "docs_out"], cwd=d,
                               timeout=150, umask=0o022)
        except Hang as h:
            return "hang", str(h)
        v = cli_verdict(rc, out, err)
        if v is not None:
            return v
        files = [os.path.join(d, "docs_out", f) for f in os.listdir(os.path.join(d, "docs_out"))]
        modes = {f"{os.stat(f).st_mode & 0o777:04o}" for f in files}
        if modes != {"0644"}:
            return "wrong", f"document mode {', '.join(sorted(modes))} under umask 022 (expected 0644)"
        return "correct", "document 0644"
    return run


def build_files(b: Builder):
    A = "files"
    L = "local"
    # modes
    b.add(A, "generate under umask 022 -> 0644", f_umask(0o022, 0o644), L, 90)
    b.add(A, "generate under umask 077 -> 0600", f_umask(0o077, 0o600), L, 90)
    b.add(A, "generate under umask 002 -> 0664", f_umask(0o002, 0o664), L, 90)
    b.add(A, "generate --backend numba under umask 022 -> 0644",
          f_umask(0o022, 0o644, spec_args=("rms", "--layout", "NC"), backend="numba"), L, 90)
    b.add(A, "regenerating keeps 0644", f_regen_mode(), L, 120)
    b.add(A, "symbn.load cache file under umask 022 -> 0644", f_cache_mode(), L, 90)
    b.add(A, "derive --format md -o under umask 022 -> 0644", f_docs_umask(), L, 200)
    # failures: one-line message, non-zero exit, no temporary file
    b.add(A, "generate into a read-only folder", f_gen_fail(_ro_dir, ("permission", "read-only", "ro", "write",
                                                                      "not permitted")), L, 90)
    b.add(A, "generate with a parent that is a file", f_gen_fail(_parent_file, ("afile", "directory", "not a")), L, 90)
    b.add(A, "generate with -o naming a file", f_gen_fail(_out_is_file, ("afile", "directory", "not a")), L, 90)
    b.add(A, "generate where the target is a directory",
          f_gen_fail(_target_dir, ("batch_nc_numpy.py", "directory")), L, 90)
    b.add(A, "generate -o /dev/null/out", f_gen_fail(_dev_null, ("/dev/null", "directory", "not a")), L, 90)
    b.add(A, "generate over a file symbn did not write", f_overwrite(_foreign, "refuse"), L, 90)
    b.add(A, "generate over a hand-edited module", f_overwrite(_edited, "refuse"), L, 120)
    b.add(A, "generate --force over a foreign file", f_overwrite(_foreign_force, "overwrite"), L, 90)
    b.add(A, "generate through a symlink to a foreign file", f_overwrite(_symlink_victim, "refuse"), L, 90)
    b.add(A, "generate twice (unchanged)", f_overwrite(_unchanged, "overwrite"), L, 120)
    k = b.k
    b.add(A, "generate -o with a newline and code in the folder name", f_banner_injection(k), L, 120)
    for name, ok in [("mymod", True), ("ñame", True), ("class", False), ("../evil", False), ("", False),
                     ("a b", False), ("x" * 300, False)]:
        b.add(A, f"generate --name {name[:20]!r}", f_name(name, ok), L, 90)
    # check
    for desc, make, expect in [
        ("missing file", _chk_missing, "refuse"), ("a text file", _chk_text, "refuse"),
        ("a directory", _chk_dir, "refuse"), ("a Python file without banner (runs code)", _chk_plain_py, "refuse"),
        ("a copied banner with the wrong content hash (runs code)", _chk_fake_banner, "refuse"),
        ("an empty .py (trusted)", _chk_empty_py, "refuse"), ("half a module (trusted)", _chk_syntax, "refuse"),
        ("generated/batch_nc_numpy.py", _chk_catalog("batch_nc_numpy.py"), "pass"),
        ("generated/layer_nc_numpy.py", _chk_catalog("layer_nc_numpy.py"), "pass"),
        ("generated/group4_nchw_numpy.py", _chk_catalog("group4_nchw_numpy.py"), "pass"),
        ("a generated 'x - mean(x)' module", _chk_generated(("x - mean(x)", "--axes", "1", "--param-axes", "none")),
         "pass"),
        ("a generated grouped custom module", _chk_generated((
            "gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta", "--axes", "1,2,3", "--param-axes", "1",
            "--groups", "2", "--channel-axis", "1")), "pass"),
        ("a generated softmax module", _chk_generated((
            "exp(x - mean(x))/sum(exp(x - mean(x)))", "--axes", "1", "--param-axes", "none")), "pass"),
        ("a generated custom layer-style module", _chk_generated((
            "(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps)", "--axes", "1", "--param-axes", "none")), "pass"),
        ("a mutated kernel (dx * 1.001, trusted)", _chk_mutated(MUT_DX), "fail"),
        ("a mutated kernel (dgamma + 1e-3, trusted)", _chk_mutated(MUT_DGAMMA), "fail"),
        ("a mutated kernel (dx + 1e-4, trusted)", _chk_mutated(MUT_DX_SHIFT), "fail"),
    ]:
        setup = {"k": b.k, "make": make}
        b.add(A, f"check {desc}", f_check_safe(f_check(setup, expect)), L, 150)
    # the symbn.load cache
    k = b.k
    b.add(A, "load after the cached module was truncated", f_cache_edit(k, _truncate, "truncated"), L, 120)
    k = b.k
    b.add(A, "load after the cached module was emptied", f_cache_edit(k, _empty, "emptied"), L, 120)
    k = b.k
    b.add(A, "load after code was appended to the cached module", f_cache_edit(k, _append_payload, "edited"), L, 120)
    k = b.k
    b.add(A, "load after the cached forward_train was edited to return zeros",
          f_cache_edit(k, _zero_forward, "edited"), L, 120)
    k = b.k
    b.add(A, "load when the cache entry is a directory", f_cache_edit(k, _dir_instead, "dir"), L, 120)
    k = b.k
    b.add(A, "load of a clean expression after a poisoned one (two processes)", f_poison_across(k), L, 150)
    b.add(A, "three processes load the same spec at once", f_concurrent(), L, 150)

    def file_value(base):
        p = os.path.join(base, "cachefile")
        open(p, "w").write("x")
        return p, lambda: None

    def ro_value(base):
        p = os.path.join(base, "rocache")
        os.mkdir(p)
        immutable(p, True)
        return p, lambda: immutable(p, False)

    b.add(A, "SYMBN_CACHE names a file", f_cache_env(file_value, "file"), L, 90)
    b.add(A, "SYMBN_CACHE is a read-only folder", f_cache_env(ro_value, "ro"), L, 90)
    b.add(A, "SYMBN_CACHE relative", f_cache_env(lambda base: ("rel_cache", lambda: None), "rel"), L, 90)
    b.add(A, "SYMBN_CACHE empty (XDG fallback)", f_cache_env(lambda base: ("", lambda: None), "empty"), L, 90)
    b.add(A, "SYMBN_CACHE=/dev/null", f_cache_env(lambda base: ("/dev/null", lambda: None), "devnull"), L, 90)
    state: dict = {}
    for variant in ["garbage index", "garbage data", "empty files"]:
        b.add(A, f"Numba cache files corrupted: {variant}", f_numba_cache(state, variant), L, 500)
    # command line
    R = "refuse"
    for desc, args, expect, keys, chk in [
        ("no arguments", [], R, ["required", "command"], None),
        ("unknown command", ["nosuch"], R, ["nosuch", "choice"], None),
        ("derive without PRESET_OR_EXPR", ["derive"], R, ["preset_or_expr", "required"], None),
        ("derive --layout XYZ", ["derive", "batch", "--layout", "XYZ"], R, ["layout"], None),
        ("derive --axes a,b", ["derive", "x - mean(x)", "--axes", "a,b", "--param-axes", "none"], R, ["axes"], None),
        ("derive batch --groups 0", ["derive", "batch", "--groups", "0"], R, ["groups"], None),
        ("derive group --groups 0", ["derive", "group", "--layout", "NCHW", "--groups", "0"], R, ["groups"], None),
        ("derive group without --groups", ["derive", "group", "--layout", "NCHW"], R, ["groups"], None),
        ("derive --eps nan", ["derive", "batch", "--eps", "nan"], R, ["eps"], None),
        ("derive --eps 1e400", ["derive", "batch", "--eps", "1e400"], R, ["eps"], None),
        ("derive --eps -1", ["derive", "batch", "--eps", "-1"], R, ["eps"], None),
        ("derive --momentum 2", ["derive", "batch", "--momentum", "2"], R, ["momentum"], None),
        ("derive --ndim 100", ["derive", "x - mean(x)", "--axes", "0", "--param-axes", "none", "--ndim", "100"], R,
         ["ndim"], None),
        ("derive --param-axes 5 --ndim 2", ["derive", "x - mean(x)", "--axes", "0", "--param-axes", "5", "--ndim", "2"],
         R, ["param_axes"], None),
        ("derive --ddof 2", ["derive", "layer", "--ddof", "2"], R, ["ddof"], None),
        ("derive --format pdf", ["derive", "batch", "--format", "pdf"], R, ["format"], None),
        ("generate --catalog with a preset", ["generate", "--catalog", "batch"], R, ["catalog"], None),
        ("generate without anything", ["generate"], R, ["preset"], None),
        ("generate --backend nope", ["generate", "batch", "--backend", "nope"], R, ["backend"], None),
        ("check without paths", ["check"], R, ["path", "required"], None),
        ("bench --cases nosuch", ["bench", "--cases", "nosuch", "--plot", "none", "--json", "none"], R,
         ["nosuch", "case"], None),
        ("list", ["list"], "ok", [], lambda out: ("batch" in out and "NCHW" in out, "lists presets")),
        ("derive batch --layout NC", ["derive", "batch", "--layout", "NC"], "ok", [],
         lambda out: ("dx = gamma*istd*(M*dy - sum_dy - sum_dy_xhat*xhat)/M" in out, "compact backward printed")),
        ("derive batch --layout NCHW --prove", ["derive", "batch", "--layout", "NCHW", "--prove"], "ok", [],
         lambda out: ("brute-force Jacobian exactly" in out, "proved")),
        ("derive group --groups 4 --layout NHWC", ["derive", "group", "--groups", "4", "--layout", "NHWC"], "ok", [],
         lambda out: ("dx" in out, "derived")),
    ]:
        b.add(A, "cli: " + desc, f_cli(args, expect, keys, chk), L, 90)


def build_all() -> list[Attempt]:
    b = Builder()
    build_parser(b)
    build_specs(b)
    build_kernels(b)
    build_files(b)
    build_layers(b)
    return b.items


# ================================================================================================================
# running

def worker_main():
    import warnings
    warnings.simplefilter("ignore")
    attempts = build_all()
    out = sys.stdout
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        i = int(line)
        t0 = time.time()
        try:
            cls, detail = attempts[i].func()
        except BaseException as e:  # noqa: BLE001 - an exception the attempt did not expect is a traceback
            cls, detail = "traceback", "uncaught " + one_line(f"{type(e).__name__}: {e}")
        out.write(RESULT + json.dumps({"i": i, "cls": cls, "detail": detail, "s": time.time() - t0}) + "\n")
        out.flush()


class Worker:
    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.proc = None
        self.q = None
        self.restarts = 0

    def start(self):
        e = child_env({"SYMBN_CACHE": os.path.join(self.run_dir, "worker_cache"),
                       "NUMBA_CACHE_DIR": os.path.join(self.run_dir, "numba_worker")})
        cwd = os.path.join(self.run_dir, "worker_cwd")
        os.makedirs(cwd, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], cwd=cwd, env=e,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(self.run_dir, "worker.stderr"), "ab"), text=True,
                                     bufsize=1, start_new_session=True, errors="replace")
        self.q = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self.q), daemon=True).start()

    @staticmethod
    def _read(proc, q):
        for line in proc.stdout:
            if RESULT in line:
                try:
                    q.put(json.loads(line[line.index(RESULT) + len(RESULT):]))
                except ValueError:
                    pass
        q.put(None)

    def kill(self):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def run(self, a: Attempt):
        startup = 0.0
        if self.proc is None or self.proc.poll() is not None:
            self.start()
            self.restarts += 1
            startup = 30.0
        try:
            self.proc.stdin.write(f"{a.idx}\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.kill()
            return "traceback", "worker process died"
        try:
            r = self.q.get(timeout=a.timeout + startup)
        except queue.Empty:
            self.kill()
            return "hang", f"no result after {a.timeout:g}s (killed)"
        if r is None:
            rc = self.proc.wait()
            self.proc = None
            return "traceback", f"worker process died (exit {rc}: crash in native code?)"
        return r["cls"], r["detail"]


def detect_trust(run_dir) -> list[str]:
    try:
        rc, out, err = cli(["check", "--help"], cwd=run_dir, timeout=60)
    except Hang:
        return []
    m = re.search(r"(--trust[\w-]*)", out)
    return [m.group(1)] if m else []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write every attempt and the counts to this file")
    ap.add_argument("--only", help="comma-separated areas (default: all)")
    ap.add_argument("--match", help="only attempts whose description contains this text")
    ap.add_argument("--list", action="store_true", help="list the attempts and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each attempt as it finishes")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker_main()

    import symbn  # which tree this run attacks
    tree = os.path.dirname(os.path.dirname(os.path.abspath(symbn.__file__)))
    run_dir = tempfile.mkdtemp(prefix="symbn_attack_")
    os.environ.update(ATTACK_TREE=tree, ATTACK_RUN=run_dir, ATTACK_TAG=str(os.getpid()))
    attempts = build_all()
    if a.list:
        for t in attempts:
            print(f"{t.idx:4d} {t.area:8s} {t.where:6s} {t.desc}")
        print(f"{len(attempts)} attempts")
        shutil.rmtree(run_dir, ignore_errors=True)
        return 0
    chosen = [t for t in attempts if (not a.only or t.area in a.only.split(","))
              and (not a.match or a.match in t.desc)]
    t_start = time.time()
    print(f"symbn attack run: {len(chosen)} attempts against {tree} (symbn {symbn.__version__}), "
          f"temporary root {run_dir}", flush=True)
    TRUST_FLAG[:] = detect_trust(run_dir)
    os.environ["ATTACK_TRUST"] = " ".join(TRUST_FLAG)
    print(f"symbn check trust flag: {TRUST_FLAG[0] if TRUST_FLAG else 'none'}", flush=True)

    results: dict[int, dict] = {}
    lock = threading.Lock()

    def record(t: Attempt, cls: str, detail: str, secs: float):
        with lock:
            results[t.idx] = dict(idx=t.idx, area=t.area, desc=t.desc, cls=cls, detail=detail, seconds=round(secs, 2))
            if a.verbose:
                print(f"[{len(results):4d}/{len(chosen)}] {cls:11s} {t.area:7s} {t.desc} -- {detail}", flush=True)
        for k in range(t.idx, t.idx + 1):
            try:
                os.unlink(f"/tmp/symbn_attack_marker_{os.getpid()}_{k}")
            except FileNotFoundError:
                pass

    def run_worker_attempts():
        w = Worker(run_dir)
        try:
            for t in [t for t in chosen if t.where == "worker"]:
                t0 = time.time()
                cls, detail = w.run(t)
                record(t, cls, detail, time.time() - t0)
        finally:
            w.kill()

    def run_local_attempts():
        for t in [t for t in chosen if t.where == "local"]:
            t0 = time.time()
            try:
                cls, detail = t.func()
            except Hang as h:
                cls, detail = "hang", str(h)
            except Exception as e:  # noqa: BLE001
                cls, detail = "traceback", "uncaught in the attempt: " + one_line(f"{type(e).__name__}: {e}")
            record(t, cls, detail, time.time() - t0)

    th = [threading.Thread(target=run_worker_attempts), threading.Thread(target=run_local_attempts)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    elapsed = time.time() - t_start

    rows = [results[t.idx] for t in chosen]
    counts = {c: sum(r["cls"] == c for r in rows) for c in CLASSES}
    by_area = {ar: {c: sum(r["cls"] == c and r["area"] == ar for r in rows) for c in CLASSES} for ar in AREAS}
    print()
    print(f"{len(rows)} attempts in {elapsed:.0f} s against {tree}")
    print("  ".join(f"{c} {counts[c]}" for c in CLASSES))
    print()
    print(f"{'area':9s}" + "".join(f"{c:>13s}" for c in CLASSES) + f"{'total':>8s}")
    for ar in AREAS:
        n = sum(by_area[ar].values())
        if n:
            print(f"{ar:9s}" + "".join(f"{by_area[ar][c]:13d}" for c in CLASSES) + f"{n:8d}")
    for c in ("security", "hang", "traceback", "wrong"):
        bad = [r for r in rows if r["cls"] == c]
        if bad:
            print(f"\n{c} ({len(bad)})")
            for r in bad:
                print(f"  [{r['area']}] {r['desc']}: {r['detail']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(tree=tree, version=symbn.__version__, seconds=round(elapsed, 1), total=len(rows),
                           counts=counts, by_area=by_area, trust_flag=TRUST_FLAG, attempts=rows), f, indent=1)
        print(f"\nwrote {a.json}")
    for leftover in os.listdir("/tmp"):
        if leftover.startswith(f"symbn_attack_marker_{os.getpid()}_"):
            os.unlink(os.path.join("/tmp", leftover))
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
