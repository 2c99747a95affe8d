"""The embedded broker's folder: every message is taken whole and exactly once while a
producer and two consumers share it (kombu's own transport handed out half-written files)."""

from __future__ import annotations

import threading
from queue import Empty

from kombu import Connection

from backend.filesystem_broker import SCHEME
from backend.queue import filesystem_broker_options, make_celery
from backend.settings import Settings

MESSAGES = 3000


def open_channel(home):
    connection = Connection(f"{SCHEME}://", transport_options=filesystem_broker_options(home))
    return connection, connection.default_channel


def test_concurrent_consumers_take_each_message_whole_and_once(tmp_path) -> None:
    producer_connection, producer = open_channel(tmp_path)
    consumers = [open_channel(tmp_path) for _ in range(2)]
    taken: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    produced = threading.Event()

    def consume(channel, into: list[int]) -> None:
        try:
            while True:
                try:
                    into.append(channel._get("cpu")["n"])
                except Empty:
                    if produced.is_set():
                        return
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [
        threading.Thread(target=consume, args=(channel, into))
        for (_, channel), into in zip(consumers, taken, strict=True)
    ]
    for thread in threads:
        thread.start()
    for n in range(MESSAGES):
        producer._put("cpu", {"n": n})
    produced.set()
    for thread in threads:
        thread.join()
    for connection, _ in [*consumers, (producer_connection, producer)]:
        connection.release()

    assert errors == []
    assert sorted(taken[0] + taken[1]) == list(range(MESSAGES))
    assert not list((tmp_path / "broker" / "processed").iterdir())


def test_the_embedded_lab_uses_it(tmp_path) -> None:
    app = make_celery(Settings(home=tmp_path, broker_url=None))
    assert app.conf.broker_url == f"{SCHEME}://"
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        channel._put("cpu", {"n": 1})
        assert channel._get("cpu") == {"n": 1}
