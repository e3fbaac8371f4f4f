"""Exact results of two-dimensional lattice gauge theory (Wilson action), by character expansion.

Conventions: ``S = beta sum_p (1 - (1/N) Re tr U_p)``, so one plaquette weighs
``exp((beta/N) Re tr U)``; ``P = <(1/N) Re tr U_p>``. For U(1), ``N = 1`` and ``(1/N) Re tr U = cos theta``.

Derivation (Migdal, JETP 42 (1975) 413; Rusakov, Mod. Phys. Lett. A5 (1990) 693;
Kiskis, Narayanan, Sigdel, arXiv:1403.1770). Expand one plaquette's weight in
characters, ``exp((beta/N) Re tr U) = sum_r a_r chi_r(U)`` with
``a_r = int dU exp((beta/N) Re tr U) chi_r(U)^*`` and ``c_r = a_r / d_r``. In two
dimensions, gauge fixing leaves the plaquettes independent up to one global
constraint, and gluing them with ``int dU chi_r(A U) chi_s(U^dag B) = delta_rs chi_r(A B)/d_r`` gives:

- on a torus of ``V = L1 L2`` plaquettes (any ``L1 x L2``): ``Z = sum_r c_r^V`` and
  ``<P> = (1/V) d ln Z / d beta = sum_r c_r^V (d ln c_r/d beta) / sum_r c_r^V``;
- in infinite volume: ``<P> = d ln a_0 / d beta = a_f / (d_f a_0) = u``;
- a contractible Wilson loop of area ``A < V`` on the torus (a disc of area ``A`` glued to a
  torus with one hole of area ``V - A``):
  ``<chi_f(W)/d_f> = sum_{r,s} d_s/(d_r d_f) N_{s f}^r c_s^A c_r^{V-A} / sum_r c_r^V``,
  where ``N_{s f}^r`` is the multiplicity of ``r`` in ``s (x) f`` (``f`` the fundamental);
  in infinite volume ``<W> = u^A`` (pure area law, no perimeter term).

Coefficients per group:

- U(1): representations ``n`` in Z, ``d_n = 1``, ``a_n = c_n = I_n(beta)``; ``n (x) f = n + 1``.
- SU(2): ``n = 2j + 1 = d_n >= 1``, ``a_n = (2n/beta) I_n(beta)``, ``c_n = 2 I_n(beta)/beta``;
  ``N_{s,2}^r = 1`` iff ``r = s +- 1``.
- SU(N), N >= 3 (the Bessel determinant; Bars & Green, PRD 20 (1979) 3311; Drouffe & Zuber,
  Phys. Rep. 102 (1983) 1): with ``x = beta/N`` and Young diagrams
  ``lambda_1 >= ... >= lambda_{N-1} >= lambda_N = 0``,
  ``a_lambda = sum_{k in Z} det[I_{lambda_j + k - j + i}(x)]_{i,j=1..N}`` (the ``k`` sum projects
  U(N) onto det U = 1), ``d_lambda`` by Weyl's formula, and ``lambda (x) f`` adds one box to a row
  (row ``i > 1`` only if ``lambda_{i-1} > lambda_i``; a box in row ``N`` completes a column of
  ``N``, which is removed).

The representation sums are truncated at the first shell of representations (``|n|`` for
U(1), ``lambda_1`` otherwise) whose weights ``c_r^V`` fall below ``1e-17`` of the trivial
one's; the ``k`` sum and the Bessel index where ``I_n(x) < 1e-30 I_0(x)``. Everything is
float64 numpy on the host; the derivatives are analytic (``I_n' = (I_{n-1} + I_{n+1})/2`` and
Jacobi's formula for the determinant). Checks: SU(3) infinite volume against a direct Weyl
(eigenvalue) integral to 1e-15; the round-3 anchor table (SU(2) beta=1 L=2: 0.243260534543;
SU(3) beta=6 L=2: 0.432128251726; computed there by finite differences) to 1.3e-10; U(1)
against :func:`physics_models.exact.u1_plaquette` to 1e-14; ``area = 1`` against the plaquette.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re

import numpy as np

_RELATIVE_CUTOFF = np.log(1e-17)   # drop a representation shell whose weight c_r^V is below this
_BESSEL_CUTOFF = 1e-30             # Bessel index where I_n(x) / I_0(x) is negligible
_MAX_SHELL = 4096


@dataclasses.dataclass(frozen=True)
class Characters:
    """A truncated character expansion of one plaquette's Boltzmann weight.

    ``labels[i]`` names representation ``i`` (an int for U(1), a Young diagram
    ``(lambda_1, ..., lambda_{N-1})`` for SU(N)); ``dims`` are ``d_r``; ``log_c`` is
    ``ln c_r`` up to a constant common to all ``r``; ``dlog_c`` is ``d ln c_r / d beta``;
    ``fusion`` lists the pairs ``(s, r)`` (indices) with ``r`` in ``s (x) fundamental``;
    ``trivial`` is the index of the trivial representation; ``n`` is ``d_f``.
    """

    labels: tuple
    dims: np.ndarray
    log_c: np.ndarray
    dlog_c: np.ndarray
    fusion: np.ndarray
    trivial: int
    n: int


def parse_group(group: str) -> tuple[str, int]:
    """``"U(1)" -> ("U", 1)``, ``"SU(3)" -> ("SU", 3)``; a ValueError for anything else."""
    match = re.fullmatch(r"\s*(S?U)\s*\(\s*(\d+)\s*\)\s*", str(group))
    if match is None or (match.group(1) == "U" and match.group(2) != "1") or int(match.group(2)) < 1 \
            or (match.group(1) == "SU" and int(match.group(2)) < 2):
        raise ValueError(f"group must be 'U(1)' or 'SU(N)' with N >= 2, got {group!r}")
    return match.group(1), int(match.group(2))


def _logs(values: np.ndarray) -> np.ndarray:
    """``ln`` of positive values; ``-inf`` where a truncated or underflowed value is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), -np.inf)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _u1_characters(beta: float, shell: int) -> Characters:
    from scipy.special import ive

    n = np.arange(-shell, shell + 1)
    i_n = ive(np.abs(n), beta)
    derivative = (ive(np.abs(n - 1), beta) + ive(np.abs(n + 1), beta)) / 2.0
    fusion = np.array([(s, s + 1) for s in range(len(n) - 1)], dtype=int).reshape(-1, 2)
    return Characters(tuple(int(v) for v in n), np.ones(len(n)), _logs(i_n), _ratio(derivative, i_n),
                      fusion, shell, 1)


def _su2_characters(beta: float, shell: int) -> Characters:
    from scipy.special import ive

    n = np.arange(1, shell + 2)  # n = d = lambda_1 + 1
    i_n = ive(n, beta)
    derivative = (ive(n - 1, beta) + ive(n + 1, beta)) / 2.0
    fusion = [(s, r) for s in range(len(n)) for r in (s - 1, s + 1) if 0 <= r < len(n)]
    return Characters(tuple((int(v) - 1,) for v in n), n.astype(np.float64), _logs(i_n),
                      _ratio(derivative, i_n) - 1.0 / beta, np.array(fusion, dtype=int), 0, 2)


def _young_diagrams(n: int, shell: int) -> list[tuple[int, ...]]:
    """All ``(lambda_1 >= ... >= lambda_{n-1} >= 0)`` with ``lambda_1 <= shell``."""
    rows = itertools.combinations_with_replacement(range(shell, -1, -1), n - 1)
    return sorted(tuple(r) for r in rows)


def weyl_dimension(diagram: tuple[int, ...]) -> int:
    """``d_lambda = prod_{i<j} (lambda_i - lambda_j + j - i) / (j - i)`` (``lambda_N = 0`` appended)."""
    lam = tuple(diagram) + (0,)
    num, den = 1, 1
    for i, j in itertools.combinations(range(len(lam)), 2):
        num *= lam[i] - lam[j] + j - i
        den *= j - i
    return num // den


def add_fundamental_box(diagram: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The SU(N) representations in ``lambda (x) N`` (each once): ``lambda`` plus one box.

    ``diagram`` is ``(lambda_1, ..., lambda_{N-1})``; a box in row ``N`` (allowed when
    ``lambda_{N-1} > 0``) completes a column, which is removed."""
    lam = list(diagram)
    out = []
    for row in range(len(lam)):
        if row == 0 or lam[row - 1] > lam[row]:
            out.append(tuple(lam[:row] + [lam[row] + 1] + lam[row + 1:]))
    if lam[-1] > 0:
        out.append(tuple(v - 1 for v in lam))
    return out


def _bessel_index_cutoff(x: float) -> int:
    from scipy.special import ive

    n = np.arange(0, int(4 * x) + 200)
    small = np.nonzero(ive(n, x) < _BESSEL_CUTOFF * ive(0, x))[0]
    return int(n[small[0]]) if len(small) else int(n[-1])


def _bessel_determinants(diagrams: list[tuple[int, ...]], n: int, x: float) -> tuple[np.ndarray, np.ndarray]:
    """``a_lambda e^{-beta}`` and ``d/dx`` of it, summed over the U(1) charge ``k``."""
    from scipy.special import ive

    lam = np.array([list(d) + [0] for d in diagrams], dtype=int)            # (R, N)
    cutoff = _bessel_index_cutoff(x)
    shell = int(lam[:, 0].max())
    k = np.arange(-shell - cutoff - n, cutoff + n + 1)
    rows = np.arange(n)
    # index[rep, k, i, j] = lambda_j + k - j + i
    index = (lam[:, None, None, :] + k[None, :, None, None]  # lambda_j + k - j + i
             - rows[None, None, None, :] + rows[None, None, :, None])
    span = int(np.abs(index).max()) + 1
    grid = np.arange(-span, span + 1)
    scaled = ive(np.abs(grid), x)                                             # e^{-x} I_n(x)
    slope = (ive(np.abs(grid - 1), x) + ive(np.abs(grid + 1), x)) / 2.0 - scaled  # d/dx of it
    matrix = scaled[index + span]                                             # (R, K, N, N)
    value = np.linalg.det(matrix).sum(axis=1)
    derivative = np.zeros_like(value)
    for column in range(n):  # Jacobi: d det = sum over columns of det with that column differentiated
        replaced = matrix.copy()
        replaced[..., :, column] = slope[index[..., :, column] + span]
        derivative += np.linalg.det(replaced).sum(axis=1)
    return value, derivative


def _sun_characters(n: int, beta: float, shell: int) -> Characters:
    diagrams = _young_diagrams(n, shell)
    value, derivative = _bessel_determinants(diagrams, n, beta / n)
    dims = np.array([weyl_dimension(d) for d in diagrams], dtype=np.float64)
    where = {d: i for i, d in enumerate(diagrams)}
    fusion = [(i, where[r]) for i, d in enumerate(diagrams) for r in add_fundamental_box(d) if r in where]
    # d ln a / d beta = (1/N) d ln(a e^{-N x}) / dx + 1
    return Characters(tuple(diagrams), dims, _logs(value) - np.log(dims), _ratio(derivative, value) / n + 1.0,
                      np.array(fusion, dtype=int), where[(0,) * (n - 1)], n)


def _shell_of(chars: Characters) -> np.ndarray:
    labels = chars.labels
    if chars.n == 1:
        return np.abs(np.array(labels))
    return np.array([label[0] for label in labels])


@functools.lru_cache(maxsize=64)
def characters(group: str, beta: float, volume: int | None) -> Characters:
    """The character table of ``group`` at ``beta``, truncated for a torus of ``volume``
    plaquettes (``None``: the trivial and fundamental representations only)."""
    kind, n = parse_group(group)
    if kind == "U":
        build = _u1_characters
    else:
        build = _su2_characters if n == 2 else functools.partial(_sun_characters, n)
    shell = 1 if volume is None else 4 + int(beta)
    while True:
        chars = build(beta, shell)
        if volume is None:
            return chars
        outer = chars.log_c[_shell_of(chars) == shell].max() - chars.log_c[chars.trivial]
        if volume * outer < _RELATIVE_CUTOFF or shell >= _MAX_SHELL:
            return chars
        shell = shell + max(2, shell // 2)


def _check(beta: float, volume: int | None) -> None:
    if not np.isfinite(beta) or not beta > 0:
        raise ValueError(f"beta must be finite and > 0, got {beta!r}")
    if volume is not None and (int(volume) != volume or volume < 1):
        raise ValueError(f"volume must be a positive integer (plaquettes on the torus) or None, "
                         f"got {volume!r}")


def _log_partition(chars: Characters, volume: int) -> float:
    from scipy.special import logsumexp

    return float(logsumexp(volume * chars.log_c))


def plaquette_2d(group: str, beta: float, volume: int | None = None) -> float:
    """Exact ``<(1/N) Re tr U_p>`` of the 2D Wilson action on a torus of ``volume`` plaquettes.

    ``group``: ``"U(1)"``, ``"SU(2)"``, ``"SU(3)"``, ``"SU(N)"``; ``volume = L1 * L2`` (the
    value depends on the area only), ``None`` for infinite volume. See the module docstring.
    """
    beta = float(beta)
    _check(beta, volume)
    chars = characters(str(group).replace(" ", ""), beta, None if volume is None else int(volume))
    if volume is None:
        return float(chars.dlog_c[chars.trivial])
    weights = np.exp(int(volume) * chars.log_c - _log_partition(chars, int(volume)))
    return float(np.sum(weights * chars.dlog_c))


def wilson_loop_2d(group: str, beta: float, area: int, volume: int | None = None) -> float:
    """Exact ``<(1/N) Re tr W>`` of a contractible Wilson loop enclosing ``area`` plaquettes.

    On a torus of ``volume`` plaquettes (``1 <= area < volume``):
    ``sum_{r,s} d_s/(d_r d_f) N_{s f}^r c_s^A c_r^{V-A} / sum_r c_r^V``; in infinite volume
    (``volume=None``) ``u^A`` with ``u`` = :func:`plaquette_2d`. ``area = 1`` is the plaquette.
    """
    from scipy.special import logsumexp

    beta = float(beta)
    _check(beta, volume)
    if int(area) != area or area < 1 or (volume is not None and area >= volume):
        raise ValueError(f"area must be an integer with 1 <= area < volume, "
                         f"got area={area!r}, volume={volume!r}")
    if volume is None:
        return plaquette_2d(group, beta) ** int(area)
    volume, area = int(volume), int(area)
    chars = characters(str(group).replace(" ", ""), beta, volume)
    s, r = chars.fusion[:, 0], chars.fusion[:, 1]
    with np.errstate(invalid="ignore"):
        terms = (np.log(chars.dims[s] / (chars.dims[r] * chars.n))
                 + area * chars.log_c[s] + (volume - area) * chars.log_c[r])
    terms = terms[np.isfinite(terms)]
    return float(np.exp(logsumexp(terms) - _log_partition(chars, volume)))
