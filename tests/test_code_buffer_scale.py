"""CodeBuffer at scale (issue 29): index invariants against naive reference models, the two
policies' rules, determinism, uniformity of draws, state round-trip, and cost that does not
grow with the items held (checked by guarding the big arrays, not by timing)."""

from __future__ import annotations

import io
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from streamcl.plugins.latent_replay import ClassBalancedPolicy, CodeBuffer
from streamcl.plugins.latent_replay.policies import sample_distinct


def tags(values, dtype=torch.int32) -> torch.Tensor:
    """Codes of shape (n, 1) whose value identifies the item."""
    return torch.as_tensor(list(values), dtype=torch.long).to(dtype).reshape(-1, 1)


def held(buf: CodeBuffer) -> List[Tuple[int, int]]:
    """Sorted (tag, label) pairs of the items held."""
    n = len(buf)
    return sorted(zip(buf.codes[:n, 0].tolist(), buf.labels[:n].tolist()))


def check_index(buf: CodeBuffer) -> None:
    """The per-class index agrees with a naive scan of the labels; slots past len are empty."""
    n = len(buf)
    lab = buf.labels[:n].long()
    counts = torch.bincount(lab, minlength=1) if n else torch.zeros(0, dtype=torch.long)
    assert torch.equal(buf.class_counts(), counts)
    assert buf.items_per_class() == {c: int(k) for c, k in enumerate(counts.tolist()) if k}
    assert buf.classes() == sorted(buf.items_per_class())
    for c in range(len(counts) + 2):
        expect = (lab == c).nonzero(as_tuple=True)[0]
        assert torch.equal(buf.indices_of(c), expect), c
        assert buf.count_of(c) == len(expect)
        if len(expect):
            r = len(expect) // 2
            assert buf.position_of(c, r) == int(expect[r])
    assert bool((buf.labels[n:] == -1).all()) and bool((buf.codes[n:] == 0).all())
    if n:
        big = buf.largest_class()
        assert big == int(torch.argmax(counts)) and buf.max_class_count() == int(counts.max())


def gpu_path(buf: CodeBuffer) -> CodeBuffer:
    """Make a CPU buffer take the code path of a buffer on a GPU (tensor writes + a CPU label mirror)."""
    buf._on_cpu = False
    buf._lab = buf._lab.copy()
    buf._codes_np = None
    return buf


# ----------------------------------------------------------------------------- primitives vs a reference
@pytest.mark.parametrize("seed,mirror", [(0, False), (1, False), (2, True)])
def test_random_primitive_sequences_match_a_naive_model(seed, mirror):
    rng = np.random.default_rng(seed)
    buf = CodeBuffer(300, (1,), "largest_class", code_dtype=torch.int32, seed=seed)
    if mirror:
        gpu_path(buf)
    ref: Dict[int, int] = {}  # tag -> label
    next_tag = 0
    for step in range(120):
        op = rng.choice(["append", "remove_few", "remove_many", "replace"], p=[0.4, 0.3, 0.1, 0.2])
        n = len(buf)
        if op == "append" and n < buf.capacity:
            k = int(rng.integers(1, min(40, buf.capacity - n) + 1))
            labels = rng.integers(0, 12, k)
            buf.append(tags(range(next_tag, next_tag + k)), torch.as_tensor(labels))
            ref.update({next_tag + i: int(labels[i]) for i in range(k)})
            next_tag += k
        elif op in ("remove_few", "remove_many") and n:
            k = int(rng.integers(1, 4)) if op == "remove_few" else int(rng.integers(n // 8 + 1, n + 1))
            pos = rng.choice(n, size=min(k, n), replace=False)
            pos = np.concatenate([pos, pos[:1]])  # a duplicate is allowed
            for t in buf.codes[torch.as_tensor(np.unique(pos)), 0].tolist():
                del ref[t]
            buf.remove(torch.as_tensor(pos))
        elif op == "replace" and n:
            p, c = int(rng.integers(n)), int(rng.integers(0, 12))
            del ref[int(buf.codes[p, 0])]
            buf.replace(p, tags([next_tag]), torch.tensor([c]))
            ref[next_tag] = c
            next_tag += 1
        assert held(buf) == sorted(ref.items()), (step, op)
        check_index(buf)
        assert np.array_equal(buf._lab, buf.labels.numpy())  # the mirror follows every write


def test_remove_and_replace_reject_positions_outside_the_items():
    from streamcl.errors import StreamclError

    buf = CodeBuffer(5, (1,), "largest_class")
    buf.append(tags(range(3), torch.uint8), torch.tensor([0, 1, 0]))
    with pytest.raises(StreamclError):
        buf.remove(torch.tensor([3]))
    with pytest.raises(StreamclError):
        buf.replace(4, tags([9], torch.uint8), torch.tensor([0]))
    buf.remove(torch.tensor([], dtype=torch.long))
    assert len(buf) == 3


# ----------------------------------------------------------------------------- largest-class rule
def reference_largest_class(capacity: int, labels: List[int], seed: int) -> Tuple[List[int], List[int]]:
    """REMIND's rule on a plain list, as first written: (tags, labels) by position."""
    g = torch.Generator().manual_seed(seed)
    tag_list: List[int] = []
    lab_list: List[int] = []
    for t, c in enumerate(labels):
        if len(lab_list) < capacity:
            tag_list.append(t)
            lab_list.append(c)
            continue
        counts = np.bincount(lab_list + [c])
        big = int(np.argmax(counts))  # first max: smallest label
        n_big = int(counts[big])
        r = int(torch.randint(n_big, (1,), generator=g).item())
        if big == c and r == n_big - 1:
            continue
        victim = [i for i, lab in enumerate(lab_list) if lab == big][r]
        tag_list[victim], lab_list[victim] = t, c
    return tag_list, lab_list


@pytest.mark.parametrize("seed,mirror", [(0, False), (5, True)])
def test_largest_class_eviction_matches_the_rule_exactly(seed, mirror):
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, 9, 700).tolist()
    stream[:60] = [0] * 60  # a skewed start: one class far above the others
    buf = CodeBuffer(50, (1,), "largest_class", code_dtype=torch.int32, seed=seed)
    if mirror:
        gpu_path(buf)
    i = 0
    while i < len(stream):  # batches of mixed sizes, incl. a bulk insert past the capacity
        k = int(rng.integers(1, 80))
        buf.add(tags(range(i, min(i + k, len(stream)))), torch.tensor(stream[i : i + k]))
        i += k
        assert len(buf) <= buf.capacity
        check_index(buf)
    ref_tags, ref_labels = reference_largest_class(50, stream, seed)
    assert buf.codes[:, 0].tolist() == ref_tags and buf.labels.tolist() == ref_labels


def test_largest_class_victim_is_uniform_within_the_class():
    hits = torch.zeros(6)
    for seed in range(600):
        buf = CodeBuffer(8, (1,), "largest_class", seed=seed)
        buf.add(tags(range(8), torch.uint8), torch.tensor([0] * 6 + [1, 2]))
        buf.add(tags([99], torch.uint8), torch.tensor([1]))  # class 0 (6 items) loses one
        survivors = set(buf.codes[:, 0].tolist())
        hits += torch.tensor([float(t not in survivors) for t in range(6)])
    assert hits.sum() == 600
    chi2 = float(((hits - 100) ** 2 / 100).sum())
    assert chi2 < 25  # 5 degrees of freedom: p ~ 1e-4


# ----------------------------------------------------------------------------- class-balanced rule
@pytest.mark.parametrize("seed", [0, 3])
def test_class_balanced_counts_follow_the_quota(seed):
    rng = np.random.default_rng(seed)
    buf = CodeBuffer(60, (1,), ClassBalancedPolicy(stride=1), code_dtype=torch.int32, seed=seed)
    expected: Dict[int, int] = {}
    offered: Dict[int, int] = {}  # tag -> label
    tag = 0
    for exp in range(6):
        new = list(range(3 * exp, 3 * exp + 3))
        buf.begin_experience(n_items=90, classes=new)
        for _ in range(8):
            k = int(rng.integers(1, 25))
            labels = rng.choice(new + list(range(3 * exp)), size=k).tolist() if exp else rng.choice(new, k).tolist()
            buf.add(tags(range(tag, tag + k)), torch.tensor(labels))
            offered.update({tag + i: labels[i] for i in range(k)})
            tag += k
            q = buf.capacity // len(buf.policy.seen)
            expected = {c: min(q, n) for c, n in expected.items()}
            for c in set(labels):
                expected[c] = min(q, expected.get(c, 0) + labels.count(c))
            assert buf.items_per_class() == {c: n for c, n in expected.items() if n}
            assert len(buf) <= buf.capacity
            assert all(offered[t] == c for t, c in held(buf))  # every item kept its label
            check_index(buf)


def test_class_balanced_truncation_keeps_a_uniform_subset():
    # quota 20: 30 offered -> a random 20 of them; then 10 more -> a random 20 of the 30.
    # Survival: 2/3 * 2/3 = 4/9 for each of the first 30 items, 2/3 for each of the last 10.
    hits = torch.zeros(40)
    runs = 300
    for seed in range(runs):
        buf = CodeBuffer(40, (1,), ClassBalancedPolicy(stride=1), seed=seed)
        buf.begin_experience(classes=[0, 1])
        buf.add(tags(range(30), torch.uint8), torch.zeros(30, dtype=torch.long))
        buf.add(tags(range(100, 120), torch.uint8), torch.ones(20, dtype=torch.long))
        buf.add(tags(range(30, 40), torch.uint8), torch.zeros(10, dtype=torch.long))
        assert buf.items_per_class() == {0: 20, 1: 20}
        for t in buf.codes[: len(buf), 0].tolist():
            if t < 40:
                hits[t] += 1
    p = torch.tensor([4 / 9] * 30 + [2 / 3] * 10)
    chi2 = float(((hits - runs * p) ** 2 / (runs * p * (1 - p))).sum())  # binomial per tag
    assert chi2 < 90  # 40 terms: mean 40, p ~ 1e-6 at 90


# ----------------------------------------------------------------------------- draws
def chi2_uniform(counts: torch.Tensor) -> float:
    e = counts.sum() / len(counts)
    return float(((counts - e) ** 2 / e).sum())


@pytest.mark.parametrize("n", [5, 15])  # rejection path (4n < 40) and permutation path
def test_sample_without_replacement_is_uniform_and_distinct(n):
    buf = CodeBuffer(40, (1,), "largest_class")
    buf.add(tags(range(40), torch.uint8), torch.arange(40) % 4)
    g = torch.Generator().manual_seed(0)
    hits, first = torch.zeros(40), torch.zeros(40)
    for _ in range(3000):
        codes, labels = buf.sample(n, generator=g)
        t = codes[:, 0].long()
        assert len(set(t.tolist())) == n and torch.equal(labels, t % 4)
        hits[t] += 1
        first[t[0]] += 1
    assert chi2_uniform(hits) < 90 and chi2_uniform(first) < 90  # 39 dof: p ~ 1e-5


def test_sample_restricted_to_classes_is_uniform_over_their_items():
    buf = CodeBuffer(60, (1,), "largest_class")
    labels = torch.tensor([i % 5 for i in range(60)])
    buf.add(tags(range(60), torch.uint8), labels)
    buf.remove(torch.tensor([3, 8, 13]))  # class 3 now holds 9 items, class 1 12
    g = torch.Generator().manual_seed(1)
    hits: Dict[int, int] = {}
    for _ in range(2000):
        codes, lab = buf.sample(4, classes=[3, 1, 17], generator=g)
        assert set(lab.tolist()) <= {1, 3} and len(set(codes[:, 0].tolist())) == 4
        for t in codes[:, 0].tolist():
            hits[t] = hits.get(t, 0) + 1
    assert len(hits) == 21
    assert chi2_uniform(torch.tensor(list(hits.values()), dtype=torch.float)) < 60  # 20 dof
    codes, lab = buf.sample(30, classes=[3], generator=g)  # more than held: with replacement
    assert len(lab) == 30 and set(lab.tolist()) == {3}


def test_sample_per_class_is_round_major_and_uniform_per_class():
    buf = CodeBuffer(30, (1,), "largest_class")
    buf.add(tags(range(30), torch.uint8), torch.tensor([0] * 7 + [1] * 20 + [4] * 3))
    g = torch.Generator().manual_seed(2)
    hits = torch.zeros(30)
    for _ in range(1400):
        codes, labels = buf.sample_per_class([4, 9, 0], 2, generator=g)
        assert labels.tolist() == [4, 0, 4, 0]
        hits[codes[:, 0].long()] += 1
    assert chi2_uniform(hits[:7]) < 30 and chi2_uniform(hits[27:]) < 20  # 6 and 2 dof
    assert hits[7:27].sum() == 0
    assert len(buf.sample_per_class([], 3)[1]) == 0 and len(buf.sample_per_class([0], 0)[1]) == 0
    assert buf.sample_per_class(torch.tensor([1]), 1)[1].tolist() == [1]  # a tensor of classes


def test_sample_distinct_gives_uniform_ordered_arrangements():
    g = torch.Generator().manual_seed(3)
    pairs = torch.zeros(9, 9)
    for _ in range(14400):
        a, b = sample_distinct(9, 2, g).tolist()  # 4 * 2 < 9: the rejection path
        pairs[a, b] += 1
    assert pairs.diagonal().sum() == 0
    off = pairs[~torch.eye(9, dtype=torch.bool)]
    assert chi2_uniform(off) < 150  # 71 dof
    assert sorted(sample_distinct(5, 5, g).tolist()) == list(range(5))
    assert len(sample_distinct(10, 0, g)) == 0


def test_draws_and_admissions_are_deterministic_under_a_seed():
    def run(seed: int):
        buf = CodeBuffer(64, (2,), "largest_class", seed=seed)
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(40):
            buf.add(torch.randint(0, 255, (5, 2), dtype=torch.uint8, generator=g), torch.randint(8, (5,), generator=g))
            out += [buf.sample(6, generator=g)[0], buf.sample_per_class([1, 2, 3], 2, generator=g)[0],
                    buf.sample(3, classes=[0, 5], generator=g)[0]]
        return buf, out

    (a, oa), (b, ob), (c, _) = run(0), run(0), run(1)
    assert torch.equal(a.codes, b.codes) and all(torch.equal(x, y) for x, y in zip(oa, ob))
    assert not torch.equal(a.codes, c.codes)


# ----------------------------------------------------------------------------- state
@pytest.mark.parametrize("policy", ["largest_class", "class_balanced"])
def test_state_round_trip_restores_an_identical_buffer(policy):
    rng = np.random.default_rng(7)
    buf = CodeBuffer(80, (1,), policy, code_dtype=torch.int32, seed=7)
    for i in range(30):  # evictions, truncations, swap-removes
        if policy == "class_balanced" and i % 10 == 0:
            buf.begin_experience(n_items=40, classes=range(i // 10 * 3, i // 10 * 3 + 3))
        k = int(rng.integers(1, 12))
        buf.add(tags(range(100 * i, 100 * i + k)), torch.as_tensor(rng.integers(0, 3 + i // 10 * 3, k)))
        if i % 7 == 3:
            buf.remove(torch.as_tensor(rng.choice(len(buf), 3, replace=False)))
    state = buf.state_dict()
    assert set(state) == {"capacity", "code_shape", "code_dtype", "size", "codes", "labels", "policy_name",
                          "policy", "seed", "generator"}
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    other = CodeBuffer.from_state_dict(torch.load(f, weights_only=True))
    assert torch.equal(other.codes, buf.codes) and torch.equal(other.labels, buf.labels)
    check_index(other)
    # the same future: draws with their own generators, the policies' evictions with the buffers'
    for bb in (buf, other):
        bb._trace = []  # type: ignore[attr-defined]
        g = torch.Generator().manual_seed(0)
        for i in range(20):
            bb.add(tags(range(9000 + 3 * i, 9003 + 3 * i)), torch.tensor([i % 4, 1, 2]))
            bb._trace += [bb.sample(5, generator=g)[0], bb.sample_per_class([0, 1, 2], 1, generator=g)[0],
                          bb.sample(4, classes=[1, 2], generator=g)[0]]
    assert all(torch.equal(x, y) for x, y in zip(buf._trace, other._trace))
    assert torch.equal(other.codes, buf.codes)
    # loading into an existing buffer of another shape replaces it entirely
    into = CodeBuffer(3, (4,), policy)
    into.load_state_dict(state)
    assert into.capacity == 80 and into.code_shape == (1,) and into.code_dtype == torch.int32
    assert torch.equal(into.codes[: len(into)], state["codes"]) and torch.equal(into.labels[: len(into)], state["labels"])
    check_index(into)


# ----------------------------------------------------------------------------- cost, without a clock
class _GuardArray(np.ndarray):
    """An ndarray view that fails on any whole-array work above ``limit`` elements."""

    limit = 0

    def _check(self, *arrays):
        for a in arrays:
            if isinstance(a, np.ndarray) and a.size > _GuardArray.limit:
                raise AssertionError(f"O(items) array work on {a.size} elements")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        self._check(*inputs)
        plain = [x.view(np.ndarray) if isinstance(x, _GuardArray) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(x.view(np.ndarray) if isinstance(x, _GuardArray) else x for x in kwargs["out"])
        return getattr(ufunc, method)(*plain, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        flat = [a for x in args for a in (x if isinstance(x, (list, tuple)) else (x,))]
        self._check(*flat)
        return super().__array_function__(func, types, args, kwargs)

    def __getitem__(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        self._check(*[k for k in keys if isinstance(k, np.ndarray)])  # fancy indexing by a big array
        return super().__getitem__(key)

    def astype(self, *a, **k):
        self._check(self)
        return super().astype(*a, **k)

    def copy(self, *a, **k):
        self._check(self)
        return super().copy(*a, **k)

    def tolist(self):
        self._check(self)
        return super().tolist()


class _GuardTensor(torch.Tensor):
    """A tensor view whose operations fail when they produce more than ``limit`` elements."""

    limit = 0
    _VIEWS = {"__getitem__", "__setitem__", "numpy", "as_subclass", "__get__", "__len__"}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if isinstance(out, torch.Tensor) and out.numel() > cls.limit:
            if name not in cls._VIEWS:
                raise AssertionError(f"O(items) tensor {name} of {out.numel()} elements")
            return out.as_subclass(cls)  # a big view: keep watching what is done with it
        return out


@pytest.mark.parametrize("policy", ["largest_class", "class_balanced"])
def test_buffer_operations_do_no_whole_buffer_work(policy, monkeypatch):
    n_items, n_classes, limit = 120_000, 100, 5_000
    buf = CodeBuffer(n_items, (4,), policy, seed=0)
    if policy == "class_balanced":
        buf.begin_experience(n_items=n_items, classes=range(n_classes))
    buf.add(torch.randint(0, 255, (n_items, 4), dtype=torch.uint8), torch.arange(n_items) % n_classes)
    assert len(buf) == n_items
    # from here on the big arrays refuse O(items) work; classes and per-class slabs (1200) pass
    _GuardArray.limit = _GuardTensor.limit = limit
    buf._lab = buf._lab.view(_GuardArray)
    buf._codes_np = buf._codes_np.view(_GuardArray)
    buf._index.pos = buf._index.pos.view(_GuardArray)
    buf.codes = buf.codes.as_subclass(_GuardTensor)
    buf.labels = buf.labels.as_subclass(_GuardTensor)
    real_randperm = torch.randperm

    def small_randperm(n, *a, **k):
        assert n <= limit, f"randperm over {n}"
        return real_randperm(n, *a, **k)

    monkeypatch.setattr(torch, "randperm", small_randperm)
    repacks = buf._index.repacks
    g = torch.Generator().manual_seed(0)
    classes = list(range(n_classes))
    for i in range(300):
        c = i % n_classes
        buf.add(torch.full((1, 4), i % 255, dtype=torch.uint8), torch.tensor([c]))
        assert buf.sample(50, generator=g)[0].shape == (50, 4)
        assert len(buf.sample(20, classes=[c, (c + 7) % n_classes], generator=g)[1]) == 20
        assert len(buf.sample_per_class(classes, 2, generator=g)[1]) == 2 * n_classes
        if i % 50 == 0:
            buf.remove(torch.tensor([i, n_items // 2 + i]))
            buf.replace(7, torch.zeros(1, 4, dtype=torch.uint8), torch.tensor([(c + 1) % n_classes]))
            assert buf.count_of(c) > 0 and buf.position_of(c, 3) >= 0 and len(buf.positions_of(c, torch.tensor([0, 5])))
    assert buf._index.repacks == repacks  # no O(items) index pass either
    assert len(buf) <= n_items
    # the guard works: a whole-buffer scan is refused
    with pytest.raises(AssertionError, match="O\\(items\\)"):
        buf.labels[: len(buf)] == 3  # noqa: B015
    with pytest.raises(AssertionError, match="O\\(items\\)"):
        buf._lab[: len(buf)] == 3  # noqa: B015
    with pytest.raises(AssertionError, match="O\\(items\\)"):
        np.argsort(buf._index.pos)
    with pytest.raises(AssertionError, match="randperm"):
        torch.randperm(n_items)
