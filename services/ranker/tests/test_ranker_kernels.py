"""The compiled building blocks behind the fast path, against plain Python on the same data:
grouping of explanation keys, keyed look-ups, hashes, history estimates, memory setting."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hdc.ranker.v1 import ranker_pb2 as pb
from hdc_common.errors import ConfigError
from hdc_common.settings import load_settings
from hdc_ranker import wire
from hdc_ranker.groups import group_rows
from hdc_ranker.history import HistoryStore
from hdc_ranker.memory import retain_freed_memory
from hdc_ranker.plugins import Rejected
from hdc_ranker.settings import RankerSettings
from hdc_ranker.table import text_hash
from hdc_ranker.user_context import KeyIndex


def _python_groups(rows: list[tuple]) -> tuple[list[int], list[int]]:
    first: dict[tuple, int] = {}
    group = [first.setdefault(r, len(first)) for r in rows]
    starts = {g: i for i, r in reversed(list(enumerate(rows))) for g in [first[r]]}
    return [starts[g] for g in range(len(first))], group


@pytest.mark.parametrize("width", [1, 3, 20])
def test_group_rows_matches_python(width):
    rng = np.random.default_rng(width)
    keys = rng.integers(0, 4, size=(500, width)).astype(np.float64)
    keys[::7, 0] = -0.0  # equal to 0.0
    first, group = group_rows(keys if width > 1 else keys[:, 0])
    rows = [tuple(float(x) + 0.0 for x in row) for row in keys]
    want_first, want_group = _python_groups(rows)
    assert first.tolist() == want_first
    assert group.tolist() == want_group


def test_group_rows_of_hashes_bools_and_nothing():
    hashes = np.array([5, 2**63 + 1, 5, 7, 2**63 + 1], dtype=np.uint64)
    first, group = group_rows(hashes)
    assert first.tolist() == [0, 1, 3] and group.tolist() == [0, 1, 0, 2, 1]
    first, group = group_rows(np.array([[True, False], [True, False], [False, False]]))
    assert group.tolist() == [0, 0, 1]
    first, group = group_rows(np.zeros((0, 3)))
    assert first.size == 0 and group.size == 0


def test_rejected_explains_each_distinct_key_once():
    calls: list[int] = []

    def explain(i: int) -> str:
        calls.append(i)
        return f"sentence {i % 3}"

    mask = np.ones(9, dtype=bool)
    mask[4] = False
    r = Rejected(mask, "X", "x", explain, key=np.arange(9) % 3)
    idx, messages = r.messages()
    assert idx.tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert messages == [f"sentence {i % 3}" for i in idx.tolist()]
    assert calls == [0, 1, 2]  # once per distinct key
    lazy = Rejected(mask, "X", "x", explain, key=lambda idx: idx % 3)
    lazy_idx, lazy_messages = lazy.messages()
    assert lazy_idx.tolist() == idx.tolist() and lazy_messages == messages


def test_key_index_keeps_the_last_entry_of_a_key():
    keys = np.array([10, 20, 10, 30], dtype=np.uint64)
    index = KeyIndex(keys, np.arange(4))
    assert index.find(np.array([10, 20, 30, 40], dtype=np.uint64)).tolist() == [2, 1, 3, -1]
    assert KeyIndex(keys[:0], np.arange(0)).find(keys).tolist() == [-1] * 4


def test_hashes_of_texts_and_of_request_bytes_agree():
    words = ["", "a", "site-1", "Tesla V100", "https://iam.example.org/", "ü" * 9, "x" * 64]
    assert text_hash("") == int(wire.EMPTY_HASH)
    assert len({wire.hash_text(w) for w in words}) == len(words)
    assert wire.hash_text("NVIDIA", lower=True) == wire.hash_text("nvidia")
    assert wire.hash_text("https://a//", strip_slash=True) == wire.hash_text("https://a")
    data = "".join(words).encode()
    buf = np.frombuffer(data, dtype=np.uint8)
    offs, lens, pos = [], [], 0
    for w in words:
        offs.append(pos)
        lens.append(len(w.encode()))
        pos += lens[-1]
    spans = wire.hash_spans(buf, np.array(offs), np.array(lens))
    assert spans.tolist() == [wire.hash_text(w) for w in words]


def test_history_estimates_match_the_formula(mk, sqlite_url):
    from hdc_common.db import create_engine, session_factory
    from hdc_ranker.service import migrate_schema

    engine = create_engine(sqlite_url)
    migrate_schema(engine)
    sessions = session_factory(engine)
    half_life = 3600.0
    store = HistoryStore(sessions, half_life_s=half_life, window=3)
    rng = random.Random(1)
    outcomes: dict[str, list[tuple[float, bool]]] = {}
    with sessions.begin() as s:
        for n in range(40):
            site, ok = rng.choice("abc"), rng.random() < 0.6
            when = mk.NOW - rng.randint(0, 20_000)
            store.record(
                s,
                {
                    "uuid": f"d{n}",
                    "status": "CREATE_COMPLETE" if ok else "CREATE_FAILED",
                    "site_id": site,
                },
                when=when,
            )
            outcomes.setdefault(site, []).append((when, ok))
    want = {}
    for site, rows in outcomes.items():
        newest = sorted(rows, reverse=True)[:3]  # the window: the 3 most recent
        w = [0.5 ** (max(0.0, mk.NOW - t) / half_life) for t, _ in newest]
        want[site] = (sum(wi for wi, (_, ok) in zip(w, newest, strict=True) if ok) + 1) / (
            sum(w) + 2
        )
    got = store.estimates(mk.NOW)
    assert got == pytest.approx(want)
    sites = ["a", "b", "c", "unknown"]
    by_name = store.success_estimates(sites, mk.NOW)
    by_hash = store.success_by_hash(np.array([text_hash(s) for s in sites], np.uint64), mk.NOW)
    assert by_name.tolist() == by_hash.tolist() and by_name[-1] == 0.5


def test_retaining_freed_memory_is_a_setting(monkeypatch):
    assert retain_freed_memory(64)  # glibc: both thresholds accepted
    assert not retain_freed_memory(0)  # 0: the C library's default, nothing set
    monkeypatch.setenv("HDC_RANKER_MALLOC_RETAIN_MB", "0")
    assert load_settings(RankerSettings).malloc_retain_mb == 0
    monkeypatch.setenv("HDC_RANKER_MALLOC_RETAIN_MB", "-1")
    with pytest.raises(ConfigError, match="malloc_retain_mb"):
        load_settings(RankerSettings)


def test_a_map_key_sent_twice_keeps_the_later_value(ranker, mk):
    # Two serialized Sla messages back to back are one merged Sla: its targets map gets
    # "public_ip" twice, NaN then 2.0; protobuf parsers keep the later, so does the ranker.
    sla = (
        pb.Sla(id="1", site_id="a", targets={"public_ip": float("nan")}).SerializeToString()
        + pb.Sla(targets={"public_ip": 2.0}).SerializeToString()
    )
    req = mk.request(mk.candidate("a"), mk.candidate("b"), scorers=["sla"])
    raw = req.SerializeToString() + b"\x12" + bytes([len(sla)]) + sla
    assert pb.RankRequest.FromString(raw).slas[0].targets["public_ip"] == 2.0
    out = ranker.rank(raw)
    assert out.scores[:, 0].tolist() == [1.0, 0.0]
