"""Messages and notices on every backend. A message left for a node is taken by it once, with
its body verbatim, then replied to, its reply read, and deleted. A listener is called on the event
loop with an `entries` notice (run id, head seq) after create_run and after every append, a
`messages` notice (node id) after send_message and a `replies` notice (message id) after
reply_message; a removed listener is called no more. On a storage several servers share, a
listener on another instance gets them too.

Notices are awaited (with a generous time limit), never slept for. Ids are random: notices may
travel further than one test's data (PostgreSQL's channels are per database)."""

from __future__ import annotations

import asyncio
import uuid

import anyio
import pytest

from thymos.storage import Message, Notice, SeqConflict, Storage

from ._chains import Chain, append, create, fresh_run_id

NOTICE_WAIT_S = 10.0
NOW = 1_767_225_600_000_000


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Inbox:
    """A listener that keeps every notice it is given and lets a test wait for one."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.notices: list[Notice] = []
        self.off_loop: list[Notice] = []
        self._changed = asyncio.Event()

    def __call__(self, notice: Notice) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        self.notices.append(notice)
        if on_loop:
            self._changed.set()
        else:
            self.off_loop.append(notice)
            self.loop.call_soon_threadsafe(self._changed.set)

    def seen(self, topic: str, key: str, seq: int | None = None) -> bool:
        return any(
            n.topic == topic and n.key == key and (seq is None or n.seq == seq)
            for n in list(self.notices)
        )

    async def wait_for(self, topic: str, key: str, seq: int | None = None) -> None:
        """Return once a notice of `topic` for `key` (at `seq`, when given) has arrived."""
        try:
            with anyio.fail_after(NOTICE_WAIT_S):
                while not self.seen(topic, key, seq):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(
                f"no {topic!r} notice for {key!r} (seq {seq}) within {NOTICE_WAIT_S} s; "
                f"received: {self.notices}"
            )
        assert self.off_loop == [], "listeners must be called on the event loop"


@pytest.mark.anyio
async def test_a_message_is_taken_once_then_replied_to_and_deleted(storage: Storage) -> None:
    """A node takes the messages left for it once each (bodies verbatim, none for other nodes);
    a second take returns nothing; the reply is read back once recorded; a deleted message has
    no reply to read."""
    mailbox = storage.ledger
    vote, cancel, elsewhere = _id("msg"), _id("msg"), _id("msg")
    await mailbox.send_message(vote, "run-1", "node-a", b'{"vote":"yes"}', now_us=NOW)
    await mailbox.send_message(cancel, "run-2", "node-a", b"\x00binary\xff", now_us=NOW + 1)
    await mailbox.send_message(elsewhere, "run-3", "node-b", b"{}", now_us=NOW + 2)
    taken = await mailbox.take_messages("node-a")
    assert sorted(taken, key=lambda m: m.body) == [
        Message(cancel, "run-2", b"\x00binary\xff"),
        Message(vote, "run-1", b'{"vote":"yes"}'),
    ]
    assert await mailbox.take_messages("node-a") == []
    assert await mailbox.take_messages("node-c") == []

    assert await mailbox.message_reply(vote) is None
    await mailbox.reply_message(vote, b'{"ok":true}')
    assert await mailbox.message_reply(vote) == b'{"ok":true}'
    assert await mailbox.message_reply(cancel) is None
    await mailbox.delete_message(vote)
    assert await mailbox.message_reply(vote) is None
    await mailbox.delete_message(_id("never-sent"))
    assert await mailbox.message_reply(_id("never-sent")) is None
    # A message sent after a take is taken by the next one.
    await mailbox.send_message(_id("msg"), "run-1", "node-a", b"late", now_us=NOW + 3)
    assert [m.body for m in await mailbox.take_messages("node-a")] == [b"late"]
    assert [m.message_id for m in await mailbox.take_messages("node-b")] == [elsewhere]


@pytest.mark.anyio
async def test_a_listener_is_notified_of_appends_messages_and_replies(storage: Storage) -> None:
    """After create_run the listener gets `entries` at seq 0, after an append `entries` at the
    batch's last seq, after send_message `messages` for the node, after reply_message `replies`
    for the message; every call is made on the event loop."""
    store = storage.ledger
    inbox = Inbox()
    store.add_listener(inbox)
    try:
        chain = Chain(fresh_run_id())
        await create(store, chain)
        await inbox.wait_for("entries", chain.run_id, 0)
        await append(store, chain, 3)
        await inbox.wait_for("entries", chain.run_id, 3)
        await append(store, chain, 1)
        await inbox.wait_for("entries", chain.run_id, 4)

        node, message = _id("node"), _id("msg")
        await store.send_message(message, chain.run_id, node, b"cancel", now_us=NOW)
        await inbox.wait_for("messages", node)
        await store.reply_message(message, b"done")
        await inbox.wait_for("replies", message)
    finally:
        store.remove_listener(inbox)


@pytest.mark.anyio
async def test_a_refused_append_sends_no_notice_and_a_removed_listener_gets_none(
    storage: Storage,
) -> None:
    """No notice announces a head that was not stored; a listener removed is not called again
    while one still registered is."""
    store = storage.ledger
    kept, removed = Inbox(), Inbox()
    store.add_listener(kept)
    store.add_listener(removed)
    try:
        chain = Chain(fresh_run_id())
        await create(store, chain)
        await kept.wait_for("entries", chain.run_id, 0)
        await removed.wait_for("entries", chain.run_id, 0)
        store.remove_listener(removed)
        gap = chain.next(3)[2:]  # seq 3 after head 0: refused
        with pytest.raises(SeqConflict):
            await store.append(chain.run_id, gap, None)
        await append(store, chain, 2)
        await kept.wait_for("entries", chain.run_id, 2)
        assert not kept.seen("entries", chain.run_id, 3)
        assert {n.seq for n in removed.notices if n.key == chain.run_id} == {0}
    finally:
        store.remove_listener(kept)
        store.remove_listener(removed)


@pytest.mark.anyio
@pytest.mark.shared_only
async def test_a_listener_on_another_instance_of_a_shared_storage_is_notified(
    storage: Storage, other_storage: Storage
) -> None:
    """Several servers share this storage: a listener on a second instance gets the `entries`,
    `messages` and `replies` notices of the writes made through the first, and the first gets
    the `replies` notice of a reply made through the second."""
    assert storage.shared and other_storage.shared
    inbox, sender = Inbox(), Inbox()
    other_storage.ledger.add_listener(inbox)
    storage.ledger.add_listener(sender)
    try:
        chain = Chain(fresh_run_id())
        await create(storage.ledger, chain)
        await inbox.wait_for("entries", chain.run_id, 0)
        await append(storage.ledger, chain, 5)
        await inbox.wait_for("entries", chain.run_id, 5)
        node, message = _id("node"), _id("msg")
        await storage.ledger.send_message(message, chain.run_id, node, b"vote", now_us=NOW)
        await inbox.wait_for("messages", node)
        assert [m.message_id for m in await other_storage.ledger.take_messages(node)] == [message]
        await other_storage.ledger.reply_message(message, b"ok")
        await sender.wait_for("replies", message)
        assert await storage.ledger.message_reply(message) == b"ok"
    finally:
        other_storage.ledger.remove_listener(inbox)
        storage.ledger.remove_listener(sender)
