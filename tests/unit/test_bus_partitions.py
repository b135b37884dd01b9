"""Which work queue a message goes to, and which partitions each worker consumes (engine/bus/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.bus.partitions import partition_of, queue_name, share
from engine.config import load_engine_config
from engine.errors import ConfigError


def test_a_key_always_goes_to_the_same_partition_whatever_the_message() -> None:
    assert {partition_of("PAT7", i, 12) for i in range(100)} == {partition_of("PAT7", 0, 12)}


def test_the_partition_is_the_crc32_of_the_key() -> None:
    import zlib

    assert partition_of("123456789", 0, 1000) == zlib.crc32(b"123456789") % 1000 == 0xCBF43926 % 1000


def test_messages_without_a_key_are_spread_by_id() -> None:
    assert [partition_of("", i, 4) for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_every_partition_has_exactly_one_live_worker() -> None:
    workers = ["a", "b", "c"]
    shares = [share(workers, w, 12) for w in workers]
    assert sorted(p for s in shares for p in s) == list(range(12))
    assert [len(s) for s in shares] == [4, 4, 4]


def test_a_worker_not_among_the_live_ones_consumes_nothing() -> None:
    assert share(["a", "b"], "c", 12) == set()


def test_queue_names_sort_by_partition() -> None:
    assert queue_name("lab", 7) == "passerelle.work.lab.007"


def test_bus_amqp_shorthand_and_defaults(tmp_path: Path) -> None:
    file = tmp_path / "engine.yaml"
    file.write_text("store: {type: postgresql, dsn: 'postgresql://db/p'}\nbus: amqp\n")
    config = load_engine_config(file)
    assert config.bus.type == "amqp"
    assert config.bus.partitions == 12


def test_bus_amqp_without_postgresql_is_refused_with_the_reason(tmp_path: Path) -> None:
    file = tmp_path / "engine.yaml"
    file.write_text("bus: {type: amqp, url: 'amqp://mq'}\n")
    with pytest.raises(ConfigError, match="bus: amqp needs the PostgreSQL store"):
        load_engine_config(file)


def test_no_bus_is_the_default(tmp_path: Path) -> None:
    file = tmp_path / "engine.yaml"
    file.write_text("logging: {level: info}\n")
    assert load_engine_config(file).bus.type == "none"
