r"""Final answers of worked solutions and their equivalence (``engine.uncertainty.math_answers``),
the ``math`` scoring kind and the ``math`` answer equivalence, on hand cases and on the real
MATH-500 and GSM8K references."""

import threading
import time

import pytest

from vcascade.engine.scoring import KINDS, is_correct
from vcascade.engine.uncertainty import math_answers
from vcascade.engine.uncertainty.equivalence import cluster, equivalence_names, get_equivalence
from vcascade.engine.uncertainty.math_answers import final_answer, final_answer_span, math_equal, normalize_math

# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, answer",
    [
        (r"So the probability is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),  # nested braces
        (r"$\boxed{\frac{\sqrt{3}}{2}}$", r"\frac{\sqrt{3}}{2}"),
        (r"First \boxed{3}, but I made a mistake, so \boxed{4}.", "4"),  # the last box
        (r"\boxed{5}. Wait, let me check: \boxed{6", "5"),  # a truncated last box is ignored
        (r"the answer is $\boxed 7$.", "7"),  # \boxed without braces
        (r"\fbox{12}", "12"),
        (r"So $S = \boxed{\{1\pm\sqrt{5},-2\}}$", r"\{1\pm\sqrt{5},-2\}"),  # escaped braces inside
        (r"Put it in \boxed{}. The answer is 5", "5"),  # an empty box does not count
        ("She pays 3 * 4 = 12.\nAnswer: 12 apples\n", "12 apples"),
        ("**Answer:** $1,600", "1,600"),
        ("The answer is 42.", "42"),
        ("The answer is 42, which is even.", "42"),
        (r"The final answer is $\frac{3}{4}$.", r"\frac{3}{4}"),
        (r"The answer is \(x = 5\).", "x = 5"),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
        ("Answer: 3. Then the answer is: 18 dollars.", "18 dollars"),  # the last phrase
        ("So far we have 3 + 4 = 7 and then 7 * 2 =", "2"),  # truncated: the last number
        ("It costs $1,250.50 in total and", "1,250.50"),
        (r"We need \boxed{12", None),  # truncated inside the box, nothing before it
        ("I am not sure how to solve this.", None),
        ("", None),
    ],
)
def test_final_answer(text, answer):
    assert final_answer(text) == answer
    span = final_answer_span(text)
    assert (span is None) == (answer is None)
    if span is not None:
        assert text[span[0]:span[1]] == answer


def test_span_points_into_the_reply_for_token_features():
    reply = "Step 1: 2 + 2 = 4.\nStep 2: 4 * 3 = 12.\nSo the total is $\\boxed{12}$ apples."
    start, end = final_answer_span(reply)
    assert reply[start:end] == "12" and reply[start - len("\\boxed{"):start] == "\\boxed{"


# --------------------------------------------------------------------------- normalization


@pytest.mark.parametrize(
    "raw, normalized",
    [
        (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}"),
        (r"\tfrac12", r"\frac{1}{2}"),
        (r"\frac{270}7", r"\frac{270}{7}"),
        (r"\frac\pi2", r"\frac{\pi}{2}"),
        (r"\sqrt2 + \sqrt[3]{x}", r"\sqrt{2}+\sqrt[3]{x}"),
        (r"$x = 5$", "5"),
        (r"f(x) = 2x + 3", "2x+3"),
        (r"x \in [-2, 7]", "[-2,7]"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"\le(3,\frac{\pi}{2}\right)", r"(3,\frac{\pi}{2})"),  # MATH-500 packaging quirk
        (r"(-\iny,0]", r"(-\infty,0]"),  # the same quirk ("ft" removed from \infty)
        (r"x \le 5", r"x\le5"),  # a real \le is kept
        (r"\$18.", "18"),
        (r"1,\!600", "1600"),
        ("1,600", "1600"),
        ("-2, 1", "-2,1"),  # a list, not a thousands separator
        (r"10\%", "10"),
        (r"30^\circ", "30"),
        (r"30^{\circ}", "30"),
        ("30°", "30"),
        (r"5\text{ cm}^2", "5"),
        (r"18 \text{ dollars}", "18"),
        ("18 dollars", "18"),
        (r"12\mbox{ inches}", "12"),
        (r"2\sqrt{3} \text{ units}", r"2\sqrt{3}"),
        (r"\text{(C)}", "C"),
        (r"\textbf{Evelyn}", "evelyn"),
        (r"x = 1 \text{ or } x = 2", "1,2"),
        (r"\frac{9}{{}19}", r"\frac{9}{19}"),
        (r"4210_5", "4210_{5}"),
        (r"\log_2 8", r"\log_{2}8"),
        (r"3 \cdot 4", r"3\cdot4"),
        (r"\cot x", r"\cotx"),
        ("3 + 4 = 7", "7"),
    ],
)
def test_normalize_math(raw, normalized):
    assert normalize_math(raw) == normalized


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    "a, b",
    [
        ("0.5", r"\frac12"),
        ("0.5", r"\dfrac{1}{2}"),
        (r"\frac12", r"\dfrac{1}{2}"),
        ("1/2", r"\frac{1}{2}"),
        (r"\frac{\sqrt{3}}{2}", r"\sqrt{3}/2"),
        (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}"),
        (r"(3,\frac{\pi}{2})", r"\le(3,\frac{\pi}{2}\right)"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)"),
        ("18", "18.00"),
        ("18", r"\$18"),
        ("18.00", r"\$18"),
        ("1,600", "1600"),
        (r"10\%", "10"),
        ("x=5", "5"),
        (r"2\pi", r"2 \pi"),
        (r"2\pi", r"\pi \cdot 2"),
        (r"30^\circ", "30"),
        (r"90^{\circ}", "90 degrees"),
        (".35625", "0.35625"),
        (".0000672", r"6.72 \times 10^{-5}"),
        (r"137\frac{1}{2}", "137.5"),  # a mixed number
        (r"-\frac{24}{25}", "-0.96"),
        ("-2+7i", "7i - 2"),
        (r"11\sqrt{5}+11", r"11(1+\sqrt{5})"),
        ("(a+5)(b+2)", "ab + 2a + 5b + 10"),
        ("2k+2", "2(k+1)"),
        ("x^5-x^4+x^3-x^2+x-1", "(x-1)(x^4+x^2+1)"),
        (r"\cotx", r"\frac{\cos x}{\sin x}"),
        (r"\frac{20000}{\pi}", "6366.197723675814"),
        (r"(-\iny,2)\cup(3,\iny)", r"(3,\infty) \cup (-\infty, 2)"),  # unions: any order
        (r"1\pm\sqrt{19}", r"1+\sqrt{19}, 1-\sqrt{19}"),  # \pm: the two values
        (r"\{1\pm\sqrt{5},-2\}", r"-2, 1-\sqrt5, 1+\sqrt5"),
        ("-2,1", "x = 1, -2"),  # solution lists: any order
        (r"\begin{pmatrix}-1/3\\2/3\\5/3\end{pmatrix}", r"\left(-\frac13, \frac23, \frac53\right)"),
        (r"\begin{pmatrix}1/5\\-18/5\end{pmatrix}", r"\begin{pmatrix} 0.2 \\ -3.6 \end{pmatrix}"),
        (r"\text{(C)}", "C"),
        (r"\text{Evelyn}", "Evelyn"),
        ("204_5", "204_{5}"),
        (r"\log_2 8", "3"),
        (r"\tan^{-1} 1", r"\frac{\pi}{4}"),
        (r"\binom{5}{2}", "10"),
        ("5!", "120"),
        (r"3.0\times10^{5}", "300,000"),
        (r"|x-1|", "|1-x|"),
        (r"\infty", r"\infty"),
    ],
)
def test_equal(a, b):
    assert math_equal(a, b) and math_equal(b, a)


@pytest.mark.parametrize(
    "a, b",
    [
        ("1/2", "1/3"),
        ("(1,2)", "(2,1)"),  # tuples: order matters
        ("(1,2)", "[1,2]"),  # intervals: brackets matter
        ("(3,4]", "(3,4)"),
        (r"\sqrt{2}", "2"),
        ("2k", "2k+2"),
        ("3R^2", "3r^2"),
        ("0.333", r"\frac13"),  # beyond the relative tolerance
        ("18", "17.99"),
        ("-2+7i", "-2-7i"),
        (r"1\pm\sqrt{19}", r"1+\sqrt{19}"),
        ("-2,1", "-2,1,3"),
        (r"\begin{pmatrix}-1\\0\end{pmatrix}", r"\begin{pmatrix}0\\-1\end{pmatrix}"),
        ("east", "west"),
        (r"\frac{1}{x-x}", r"\frac{1}{y-y}"),  # undefined equals nothing
        (r"\infty", r"-\infty"),
        ("", ""),
        (None, "5"),
    ],
)
def test_not_equal(a, b):
    assert not math_equal(a, b) and not math_equal(b, a)


PATHOLOGICAL = [
    (r"2^{2^{2^{2^{2^{2}}}}}", "3"),  # 2^65536 is never computed
    (r"10^{10^{10}}", r"10^{10^{10}}+1"),
    (r"1000000!", r"999999!"),
    (r"\sin(10^{1999})", r"\cos(10^{1999})"),
    (r"e^{e^{e^{e^{10}}}}", r"e^{e^{e^{e^{10}}}}+1"),
    (r"(x+1)^{1000}", r"(x+1)^{999}(x+1)"),
    (r"x^{x^{x^{x^{x^{x}}}}}", r"x^{x^{x^{x^{x^{x}}}}}+0x"),
    ("+".join(f"x^{{{k}}}" for k in range(60)), "+".join(f"x^{{{k}}}" for k in reversed(range(60)))),
    ("(" * 300 + "x" + ")" * 300, "x"),
    (r"\sqrt{" * 40 + "2" + "}" * 40, r"\sqrt{" * 39 + "2" + "}" * 39),
    (r"\frac{\sin^2 x + \cos^2 x - 1}{\sin^2 y + \cos^2 y - 1}", "0"),
    ("1" * 5000, "1" * 4999 + "2"),
]


@pytest.mark.parametrize("a, b", PATHOLOGICAL)
def test_pathological_comparisons_return_quickly(a, b):
    start = time.monotonic()
    math_equal(a, b)
    assert time.monotonic() - start < 10.0  # bounded (no hang), with room for a slow CPU


def test_a_hanging_simplify_is_cut_off_by_the_budget(monkeypatch):
    """When the numeric test is inconclusive, simplify runs under SIGALRM; a hang is cut off."""
    calls = []

    def hang(expr, *args, **kwargs):
        calls.append(expr)
        while True:
            pass

    monkeypatch.setattr(math_answers, "_value", lambda expr, subs=None: None)  # numerically inconclusive
    import sympy

    monkeypatch.setattr(sympy, "simplify", hang)
    start = time.monotonic()
    assert not math_equal(r"\frac{x^2-1}{x-1}", "x+1", budget_s=0.3)
    assert calls and time.monotonic() - start < 10.0  # the hang was cut off (it never returns by itself)

    # off the main thread there is no preemption, so simplify is not attempted at all
    calls.clear()
    out = []
    worker = threading.Thread(target=lambda: out.append(math_equal(r"\frac{x^2-4}{x-2}", "x+2", budget_s=0.3)))
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and out == [False] and not calls


def test_equal_off_the_main_thread():
    out = []
    worker = threading.Thread(target=lambda: out.extend(
        [math_equal(r"\frac{\sqrt{3}}{2}", r"\sqrt{3}/2"), math_equal("(a+5)(b+2)", "ab+2a+5b+10"),
         math_equal("(1,2)", "(2,1)")]))
    worker.start()
    worker.join(10)
    assert out == [True, True, False]


# --------------------------------------------------------------------------- scoring and clustering

GSM8K_REPLY = """Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes muffins with 4.

So she has 16 - 3 - 4 = 9 eggs left to sell.

She sells each egg for $2, so she makes 9 * 2 = $18 every day.

Therefore, Janet makes \\boxed{18} dollars every day at the farmers' market."""

MATH_REPLY = r"""We convert $(0, 3)$ to polar coordinates. The radius is
$$r = \sqrt{0^2 + 3^2} = 3.$$
The point lies on the positive $y$-axis, so $\theta = \frac{\pi}{2}$.

Hence the polar coordinates are $\boxed{\left( 3, \frac{\pi}{2} \right)}$."""


def test_is_correct_math_on_model_replies():
    assert "math" in KINDS
    assert is_correct(GSM8K_REPLY, ["18"], "math")
    assert not is_correct(GSM8K_REPLY, ["9"], "math")
    assert is_correct("Let me add: 40 + 2 = 42.\n\nThe answer is 42.", ["42"], "math")
    assert is_correct("So she earns $1,600 per month.\nThe answer is $1,600.", ["1600"], "math")
    assert is_correct(MATH_REPLY, [r"\le(3,\frac{\pi}{2}\right)"], "math")
    assert not is_correct(MATH_REPLY, [r"\le(\frac{\pi}{2},3\right)"], "math")
    assert is_correct(r"... so $x = \boxed{\dfrac12}$", ["0.5"], "math")
    assert is_correct(r"... \boxed{0.5}", ["1/3", r"\frac{1}{2}"], "math")  # any reference
    assert not is_correct("I could not finish the computation because", ["18"], "math")
    assert not is_correct("", ["18"], "math")


def test_math_equivalence_clusters_final_answers():
    assert "math" in equivalence_names()
    eq = get_equivalence("math")
    texts = [r"... so \boxed{\frac12}", "The answer is 0.5.", r"... \boxed{\dfrac{1}{2}}", r"\boxed{\frac{1}{3}}",
             "no idea", "No idea!", r"Thus $\boxed{(1,2)}$", r"\boxed{(2,1)}"]
    assert cluster(eq.keys(texts), eq) == [0, 0, 0, 1, 2, 2, 3, 4]


# --------------------------------------------------------------------------- the real references


@pytest.fixture(scope="module")
def references():
    try:
        from vcascade.calibration.longform import LONGFORM_SOURCES
    except ImportError as err:  # pragma: no cover - the long-form workloads live in another module
        pytest.skip(f"long-form workloads not available: {err}")
    return {name: [item.answers[0] for item in LONGFORM_SOURCES[name]()] for name in ("math500", "gsm8k_cot")}


def _model_style(ref: str) -> str:
    """How a model might write the same answer: \\dfrac, \\left( ... \\right), spaces, math mode."""
    text = ref.replace(r"\frac", r"\dfrac").replace(r"\le(", r"\left(").replace(r"\le[", r"\left[")
    text = text.replace(r"\iny", r"\infty").replace(",", ", ").replace("+", " + ")
    return f"${text}$"


@pytest.mark.parametrize("name", ["math500", "gsm8k_cot"])
def test_real_references_recovered_and_self_equal(references, name):
    refs = references[name]
    assert len(refs) >= 150
    failures = [ref for ref in refs
                if not math_equal(ref, ref) or not math_equal(final_answer(f"so \\boxed{{{ref}}}"), ref)
                or not math_equal(_model_style(ref), ref)]
    assert failures == []


def test_real_gsm8k_references_from_a_worked_reply(references):
    refs = references["gsm8k_cot"]
    assert all(math_equal(final_answer(f"We compute step by step.\nThe answer is {r}."), r) for r in refs)
    assert all(not math_equal(final_answer(f"\\boxed{{{r}}}"), str(float(r.replace(",", "")) + 1)) for r in refs)


def test_real_math500_references_read_by_sympy(references):
    """Scalar references read as sympy expressions, and sympy's own LaTeX of that value reads back
    equal (through the sympy step, not string equality)."""
    import sympy

    read = 0
    for ref in references["math500"]:
        node = math_answers._structure(normalize_math(ref))
        if node[0] != "scalar" or (value := math_answers._sympify(node[1])) is None:
            continue
        read += 1
        assert math_equal(sympy.latex(value), ref), ref
    assert read >= 100


def test_distinct_math500_references_are_not_equal(references):
    """No false positives: distinct references (as normalized strings) are unequal, except
    solution lists that are the same set."""
    distinct = sorted({normalize_math(ref) for ref in references["math500"]})
    equal = [(a, b) for i, a in enumerate(distinct) for b in distinct[i + 1:] if math_equal(a, b)]
    assert all(set(a.split(",")) == set(b.split(",")) for a, b in equal), equal
