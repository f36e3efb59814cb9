"""Tests of the RAM tier: accounting, API semantics and the admission policy in simulation.

The policy tests replay how the cache drives the tier (``get``; on a miss, ``admit``) over
whole training epochs and compare the hit rate with ``budget / data``, the hit rate of any
fixed resident set under uniform access.  Two baselines show that the scenarios discriminate:
LRU, which thrashes on sequential passes, and "admit until full", which ignores skew.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import pytest

from spillcache import ram
from spillcache.ram import RamTier

MIB = 1 << 20


class _Tier(Protocol):
    budget: int

    def get(self, key: int) -> object | None: ...

    def admit(self, key: int, value: object, nbytes: int) -> bool: ...


class _LruTier:
    """Plain byte-budgeted LRU: every miss is admitted, the least recently used goes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[int, tuple[object, int]] = OrderedDict()
        self._nbytes = 0

    def get(self, key: int) -> object | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def admit(self, key: int, value: object, nbytes: int) -> bool:
        while self._nbytes + nbytes > self.budget:
            _, (_, size) = self._entries.popitem(last=False)
            self._nbytes -= size
        self._entries[key] = (value, nbytes)
        self._nbytes += nbytes
        return True


class _FillOnceTier:
    """Admit while there is room, never evict (what a dict with a byte cap does)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._values: dict[int, object] = {}
        self._nbytes = 0

    def get(self, key: int) -> object | None:
        return self._values.get(key)

    def admit(self, key: int, value: object, nbytes: int) -> bool:
        if self._nbytes + nbytes > self.budget:
            return False
        self._values[key] = value
        self._nbytes += nbytes
        return True


def _hit_ratios(
    tier: _Tier, keys: Sequence[int], sizes: Sequence[int], epochs: Iterable[Sequence[int]]
) -> list[float]:
    """Hit rate per epoch divided by budget / data; ``epochs`` hold indices into ``keys``."""
    fair_share = tier.budget / sum(sizes)
    ratios = []
    for order in epochs:
        hits = 0
        for i in order:
            key = keys[i]
            value = tier.get(key)
            if value is None:
                tier.admit(key, ("sample", key), sizes[i])
            else:
                assert value == ("sample", key)
                hits += 1
        ratios.append(hits / len(order) / fair_share)
    return ratios


N = 6000


def _sizes(rng: random.Random, equal: bool) -> list[int]:
    # Sizes in KiB-ish units: 1-3 units uniform, or all 2 units.
    return [2048] * N if equal else [rng.randint(1024, 3072) for _ in range(N)]


# --------------------------------------------------------------------------- API semantics


def test_get_returns_the_admitted_object_itself() -> None:
    tier = RamTier(1000)
    value = {"image": [1, 2, 3]}
    assert tier.get(7) is None
    assert tier.admit(7, value, 100) is True
    assert tier.get(7) is value
    assert 7 in tier
    assert 8 not in tier
    assert "7" not in tier
    assert len(tier) == 1
    assert tier.nbytes == 100


def test_peek_returns_the_value_without_counting_an_access() -> None:
    tier = RamTier(1000)
    value = {"image": [1, 2, 3]}
    assert tier.admit(7, value, 100) is True
    sketch = tier._sketch
    assert sketch is not None
    before = sketch.frequency(7, False)
    assert tier.peek(7) is value
    assert tier.peek(8) is None
    assert sketch.frequency(7, False) == before
    tier.get(7)
    assert sketch.frequency(7, False) == before + 1


def test_overwrite_replaces_value_and_size() -> None:
    tier = RamTier(1000)
    tier.admit(1, "old", 300)
    tier.admit(2, "other", 200)
    assert tier.admit(1, "new", 500) is True
    assert tier.get(1) == "new"
    assert tier.nbytes == 700
    assert len(tier) == 2


def test_failed_overwrite_drops_the_stale_value() -> None:
    tier = RamTier(1000)
    tier.admit(1, "old", 300)
    tier.admit(2, "filler", 700)
    # The new value does not fit without evicting, and 1 was never accessed: rejected.
    assert tier.admit(1, "new", 400) is False
    assert 1 not in tier
    assert tier.get(1) is None
    assert tier.nbytes == 700


def test_discard_and_clear() -> None:
    tier = RamTier(1000)
    for k in range(5):
        tier.admit(k, k, 100)
    tier.discard(2)
    tier.discard(99)
    assert sorted(k for k in range(5) if k in tier) == [0, 1, 3, 4]
    assert tier.nbytes == 400
    tier.clear()
    assert len(tier) == 0
    assert tier.nbytes == 0
    assert tier.get(0) is None
    assert tier.admit(0, "again", 100) is True


def test_value_larger_than_budget_is_never_admitted() -> None:
    tier = RamTier(1000)
    assert tier.admit(1, "small", 10) is True
    for _ in range(10):
        tier.get(2)
    assert tier.admit(2, "huge", 1001) is False
    assert tier.admit(1, "huge", 1001) is False
    assert len(tier) == 0
    assert tier.nbytes == 0
    assert tier.admit(3, "exact", 1000) is True


def test_zero_budget_turns_the_tier_off() -> None:
    tier = RamTier(0)
    assert tier.get(1) is None
    assert tier.admit(1, "x", 0) is False
    assert tier.admit(2, "x", 10) is False
    assert len(tier) == 0
    assert tier.nbytes == 0
    assert tier.policy_nbytes == 0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="budget"):
        RamTier(-1)
    with pytest.raises(ValueError, match="nbytes"):
        RamTier(10).admit(1, "x", -1)


def _fill(tier: RamTier, keys: Iterable[int], nbytes: int) -> None:
    for k in keys:
        assert tier.admit(k, k, nbytes) is True


def test_admit_records_no_access_get_does() -> None:
    tier = RamTier(10_000)
    _fill(tier, range(100), 100)
    # Offering a value over and over does not make it look popular...
    for _ in range(20):
        assert tier.admit(1000, "pushy", 100) is False
    # ...being asked for does: residents were never accessed, the candidate now 3 times.
    for _ in range(3):
        assert tier.get(1001) is None
    assert tier.admit(1001, "wanted", 100) is True
    assert tier.nbytes == 10_000
    assert len(tier) == 100


@pytest.mark.parametrize("key", [-1, -(2**63), 2**64, 2**90 + 7])
def test_keys_outside_64_unsigned_bits_are_counted_too(key: int) -> None:
    tier = RamTier(10_000)
    _fill(tier, range(100), 100)
    for _ in range(2):
        assert tier.get(key) is None
    assert tier.lookup(key) == (None, None)
    assert tier.admit(key, "wanted", 100) is True  # counted 3 times: beats the residents
    assert tier.get(key) == "wanted"


def test_lookup_returns_the_value_with_its_copier_and_records_an_access() -> None:
    tier = RamTier(10_000)
    _fill(tier, range(100), 100)

    def copier(value: object) -> object:
        return value

    value = object()
    assert tier.admit(500, value, 100, evict=False) is False  # full
    for _ in range(3):  # as get does, each lookup counts: the candidate beats the residents
        assert tier.lookup(1001) == (None, None)
    assert tier.admit(1001, value, 100, copier=copier) is True
    found, kept = tier.lookup(1001)
    assert found is value and kept is copier
    assert tier.lookup(5) == (5, None)  # admitted without a copier
    assert tier.get(1001) is value and tier.peek(1001) is value
    assert RamTier(0).lookup(1) == (None, None)


def test_each_copier_follows_its_value_through_removals_and_evictions() -> None:
    rng = random.Random(3)
    tier = RamTier(50 * 100)
    copiers = {k: (lambda v, k=k: (k, v)) for k in range(400)}
    for _ in range(4000):
        k = rng.randrange(400) if rng.random() < 0.5 else rng.randrange(40)  # a hot set
        if tier.lookup(k)[0] is None:
            tier.admit(k, f"v{k}", 100, copier=copiers[k])
        if rng.random() < 0.05:
            tier.discard(rng.randrange(400))
    resident = [k for k in range(400) if k in tier]
    assert 0 < len(resident) <= 50 and any(k >= 40 for k in range(400) if k not in tier)
    for k in resident:
        value, copier = tier.lookup(k)
        assert value == f"v{k}" and copier is copiers[k]
    tier.clear()
    assert tier.lookup(resident[0]) == (None, None)
    assert tier.admit(1, "one", 100) and tier.lookup(1) == ("one", None)


def test_evict_false_only_takes_free_space() -> None:
    tier = RamTier(1000)
    _fill(tier, range(9), 100)
    for _ in range(10):
        tier.get(50)
        tier.get(51)
    assert tier.admit(50, "fits", 100, evict=False) is True
    assert tier.admit(51, "would evict", 100, evict=False) is False
    assert sorted(k for k in range(52) if k in tier) == [*range(9), 50]
    # The same hot candidate is admitted when eviction is allowed.
    assert tier.admit(51, "evicts", 100) is True
    assert 51 in tier
    assert len(tier) == 10


def test_would_admit_answers_without_changing_anything() -> None:
    tier = RamTier(1000)
    assert tier.would_admit(1, 1000) is True  # free space is taken for sure
    assert tier.would_admit(1, 1001) is False  # larger than the budget
    _fill(tier, range(10), 100)
    assert tier.would_admit(5, 100) is True  # replaces its own resident value in place
    assert tier.would_admit(5, 101) is False  # needs 1 byte more, and 5 is cold
    for _ in range(2):
        tier.get(99)
    assert tier.would_admit(99, 100) is False  # 2 accesses cannot beat a margin of 3
    tier.get(99)
    assert tier.would_admit(99, 100) is True  # 3 can: admit samples the victims
    assert tier.would_admit(99, 100, evict=False) is False
    # Asking records no access and moves nothing.
    for _ in range(10):
        tier.would_admit(98, 100)
    assert tier.would_admit(98, 100) is False
    assert sorted(k for k in range(100) if k in tier) == list(range(10))
    assert tier.admit(99, "hot", 100) is True
    assert RamTier(0).would_admit(1, 0) is False


def test_may_take_turns_down_cold_keys_of_a_full_tier_before_they_are_measured() -> None:
    tier = RamTier(1000)
    assert tier.may_take(1) is True  # empty
    _fill(tier, range(8), 100)
    assert tier.may_take(99) is True  # 200 bytes free: at least the mean entry (100)
    tier.admit(8, "x", 150)
    assert tier.may_take(99) is False  # 50 free, and 99 was never asked for
    for _ in range(3):
        tier.get(99)
    # Three accesses beat any of the residents, never asked for since they were admitted.
    assert tier.may_take(99) is True
    for _ in range(5):
        for k in range(9):
            tier.get(k)
    # Now every resident is as popular: no draw can find one that 99 beats by the margin.
    assert not any(tier.may_take(99) for _ in range(20))
    assert RamTier(0).may_take(1) is False


def test_large_candidate_evicts_several_cold_residents() -> None:
    tier = RamTier(1000)
    _fill(tier, range(10), 100)
    for _ in range(5):
        tier.get(99)
    assert tier.admit(99, "big", 450) is True
    assert tier.nbytes == 950
    assert len(tier) == 6


def test_hot_residents_are_not_evicted() -> None:
    tier = RamTier(1000)
    _fill(tier, range(10), 100)
    for _ in range(5):
        for k in range(10):
            tier.get(k)
    for _ in range(5):
        tier.get(99)
    # 99 is as popular as every resident: no clear winner, nothing moves.
    assert tier.admit(99, "challenger", 100) is False
    assert sorted(k for k in range(100) if k in tier) == list(range(10))


def test_accounting_never_exceeds_budget_under_random_operations() -> None:
    rng = random.Random(1234)
    budget = 50_000
    tier = RamTier(budget)
    keyspace = [*range(300), *(2**62 + 12345 * i for i in range(50))]
    hot: list[int] = []
    latest: dict[int, tuple[str, int, int]] = {}  # key -> last admitted (value, nbytes, step)
    evictions = declined = 0
    for step in range(20_000):
        if step % 1000 == 0:  # a moving hot set keeps forcing evictions
            hot = rng.sample(keyspace, 30)
        key = rng.choice(hot) if rng.random() < 0.4 else rng.choice(keyspace)
        op = rng.random()
        if op < 0.6:
            value = tier.get(key)
            assert value is None or value is latest[key]
        elif op < 0.9:
            nbytes = rng.choice([0, rng.randint(1, 3000), rng.randint(1, budget + 10)])
            value = (f"v{key}", nbytes, step)
            before = len(tier) - (key in tier)
            evict = rng.random() < 0.8
            may = tier.would_admit(key, nbytes, evict=evict)
            resident = tier.admit(key, value, nbytes, evict=evict)
            latest[key] = value
            assert may or not resident  # would_admit's "no" is certain
            declined += may and not resident
            assert (key in tier) is resident
            assert resident or nbytes > budget or tier.nbytes + nbytes > budget
            evictions += len(tier) - resident < before
        elif op < 0.99:
            tier.discard(key)
            assert key not in tier
        else:
            tier.clear()
        resident_keys = [k for k in latest if k in tier]
        assert tier.nbytes == sum(latest[k][1] for k in resident_keys)
        assert 0 <= tier.nbytes <= budget
        assert len(tier) == len(resident_keys)
    assert evictions > 30  # the run exercised eviction (64, mostly of several victims)
    assert declined > 30  # ...and candidates that would_admit could not rule out but lost


def test_same_accesses_give_same_residents() -> None:
    def run() -> list[int]:
        rng = random.Random(5)
        tier = RamTier(20_000)
        for _ in range(20_000):
            k = int(rng.paretovariate(1.2)) % 2000
            if tier.get(k) is None:
                tier.admit(k, k, rng.randint(50, 300))
        return sorted(k for k in range(2000) if k in tier)

    assert run() == run()


# --------------------------------------------------------------------------- epochs


@pytest.mark.parametrize("equal_sizes", [True, False], ids=["equal-sizes", "random-sizes"])
@pytest.mark.parametrize("shuffled", [False, True], ids=["sequential", "shuffled"])
@pytest.mark.parametrize("sparse_keys", [False, True], ids=["dense-keys", "sparse-2**62-keys"])
def test_full_passes_hit_the_fair_share_every_epoch(
    shuffled: bool, equal_sizes: bool, sparse_keys: bool
) -> None:
    """Data is 3x the budget; every epoch after the first hits >= 90 % of budget / data.

    LRU hits 0 % on a sequential pass: each sample is evicted just before its next use.  Here
    all samples are equally frequent, so no candidate beats a resident by the margin and the
    first budget's worth of samples stays.  8 epochs span one halving of the sketch (every
    10 accesses per resident, ~3.3 epochs here), after which a margin of 2 used to churn.
    """
    rng = random.Random(42)
    sizes = _sizes(rng, equal_sizes)
    keys = [2**62 + 7919 * i for i in range(N)] if sparse_keys else list(range(N))
    epochs = []
    for _ in range(8):
        order = list(range(N))
        if shuffled:
            rng.shuffle(order)
        epochs.append(order)
    tier = RamTier(sum(sizes) // 3)
    ratios = _hit_ratios(tier, keys, sizes, epochs)
    assert ratios[0] == 0.0
    assert min(ratios[1:]) >= 0.9, ratios
    assert tier.nbytes <= tier.budget


def test_lru_thrashes_on_sequential_passes() -> None:
    """The baseline the policy must beat: LRU gets no hit at all from epoch 2 on."""
    sizes = [2048] * N
    ratios = _hit_ratios(_LruTier(sum(sizes) // 3), range(N), sizes, [range(N)] * 3)
    assert ratios == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- skew


def _weighted_epochs(rng: random.Random, epochs: int, hot: set[int]) -> list[list[int]]:
    """Draws with replacement, N per epoch; 20 % of the indices carry 80 % of the weight."""
    weights = [4.0 if i in hot else 0.25 for i in range(N)]
    return [rng.choices(range(N), weights=weights, k=N) for _ in range(epochs)]


def _skew_ratios(make_tier: Callable[[int], _Tier], seed: int) -> list[float]:
    rng = random.Random(seed)
    sizes = [2048] * N
    hot = set(rng.sample(range(N), N // 5))
    epochs = [list(range(N)), *_weighted_epochs(rng, 6, hot)]
    return _hit_ratios(make_tier(sum(sizes) // 3), range(N), sizes, epochs)


@pytest.mark.parametrize("seed", [0, 1])
def test_skewed_reuse_keeps_the_hot_set(seed: int) -> None:
    """After a sequential pass, weighted epochs 3..6 hit >= 1.5x budget / data (ideal 2.5x)."""
    ratios = _skew_ratios(RamTier, seed)
    assert min(ratios[3:]) >= 1.5, ratios


def test_fill_once_ignores_skew() -> None:
    """The baseline: keeping what came first stays at ~1x, so the skew test discriminates."""
    ratios = _skew_ratios(_FillOnceTier, 0)
    assert max(ratios[3:]) < 1.2, ratios


def test_new_hot_set_takes_over() -> None:
    """Drift: after 12 epochs favouring one hot set, a disjoint one takes over.

    Without aging, the old set's counts (~4 per epoch) would shield it for 12 more epochs:
    the new set would only displace the cold residents and stall at ~1.8x.
    """
    rng = random.Random(3)
    sizes = [2048] * N
    shuffled = rng.sample(range(N), N)
    first, second = set(shuffled[: N // 5]), set(shuffled[N // 5 : 2 * N // 5])
    epochs = [list(range(N)), *_weighted_epochs(rng, 12, first), *_weighted_epochs(rng, 8, second)]
    ratios = _hit_ratios(RamTier(sum(sizes) // 3), range(N), sizes, epochs)
    assert min(ratios[-3:]) >= 2.2, ratios


# --------------------------------------------------------------------------- memory


def test_policy_memory_is_bounded_and_independent_of_distinct_keys() -> None:
    budget = 20 * MIB
    tier = RamTier(budget)
    _fill(tier, range(2000), budget // 2000)
    after_fill = tier.policy_nbytes
    assert 0 < after_fill <= MIB + budget // 50
    # 200k distinct keys that are looked up once and never stored.
    for k in range(10**9, 10**9 + 200_000):
        assert tier.get(k) is None
        tier.admit(k, k, budget // 2000)
    assert tier.policy_nbytes == after_fill
    assert len(tier) == 2000


@pytest.mark.parametrize(
    ("budget", "nbytes"), [(1000, 1), (10**12, 1), (10**12, 10**6), (100 * MIB, 100)]
)
def test_policy_memory_cap(budget: int, nbytes: int) -> None:
    tier = RamTier(budget)
    _fill(tier, range(3), nbytes)
    assert tier.policy_nbytes <= min(16 * MIB, MIB + budget // 50)


def test_capped_sketch_still_never_thrashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Too many entries for the memory cap: shuffled passes still keep the fair share."""
    monkeypatch.setattr(ram, "_SKETCH_CAP", 16 << 10)  # 4096 counters/row for 2000 entries
    rng = random.Random(9)
    sizes = [2048] * N
    epochs = [rng.sample(range(N), N) for _ in range(8)]
    tier = RamTier(sum(sizes) // 3)
    ratios = _hit_ratios(tier, range(N), sizes, epochs)
    assert tier.policy_nbytes == 16 << 10
    assert min(ratios[1:]) >= 0.9, ratios
