"""Acceptance of the message card: spoken messages and questions in other voices than the
bot's, played by sipp into the running daemon; each ended call's card is read back from
GET /api/calls/{call_id} and must match the `call_summary` the daemon published."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import RunningDaemon, User, free_even_port_range, make_config, run_daemon
from tests.integration.test_speech_corpus import (
    CONCURRENCY,
    GREETING,
    Outcome,
    Sample,
    place_calls,
)
from tests.speech_corpus import DEFAULT_VOICES, KNOWLEDGE, make_clip

MESSAGES = (
    ("Hi, this is Maria, please call me back on five five five, one two three four.",
     "Maria", "5551234"),
    ("This is Anna from the flower shop, can you call me back on five five five, four four "
     "zero one?", "Anna", "5554401"),
)
QUESTION = "What are your opening hours?"
MAX_MISHEARD_NAMES = 1  # of the 8 messages: names the recogniser itself got wrong
SUMMARY_WAIT = 15.0   # seconds from call_ended to call_summary (rules: well under one)


async def card_of(daemon: RunningDaemon, http: httpx.AsyncClient, token: str,
                  outcome: Outcome) -> tuple[dict[str, Any], dict[str, Any]]:
    """The call's published call_summary (log) and its REST summary."""
    assert outcome.call_id is not None, outcome.problems
    published = await daemon.wait_for_log("call_summary", timeout=SUMMARY_WAIT,
                                          call_id=outcome.call_id)
    answer = await http.get(f"/api/calls/{outcome.call_id}",
                            headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    call = answer.json()
    assert call["state"] == "ended" and call["summary"] is not None, call
    return published, call["summary"]


@pytest.mark.slow
async def test_spoken_messages_and_questions_make_the_right_card(tmp_path: Path) -> None:
    """Call-back request and number right for every voice's message, the name wherever the
    recogniser heard it (at most one misheard); a knowledge question is
    answered_from_knowledge."""
    admin = User("1000", role="admin")
    stranger = User("1002")     # the calls are to other extensions: not theirs to see
    config = make_config(tmp_path, users=[admin, stranger])
    config.rtp_ports = free_even_port_range(4 * CONCURRENCY + 40)
    (tmp_path / "knowledge").mkdir()
    (tmp_path / "knowledge" / "salon.md").write_text(KNOWLEDGE)
    config.extra = f'[voicebot]\nknowledge = "knowledge"\ngreeting = "{GREETING}"\n'
    config.write()
    jobs = [(voice, text, "message") for voice in DEFAULT_VOICES for text, _, _ in MESSAGES]
    jobs += [(voice, QUESTION, "question") for voice in DEFAULT_VOICES]
    with trio.fail_after(420):
        clips = tmp_path / "clips"
        samples = [Sample(voice, text, kind, None,
                          await trio.to_thread.run_sync(make_clip, voice, text, clips))
                   for voice, text, kind in jobs]
        outcomes = [Outcome(sample, extension=f"7{index:03d}")
                    for index, sample in enumerate(samples)]
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            login = await http.post("/api/auth/login", json={
                "extension": admin.extension, "password": admin.password, "tenant": "acme"})
            token = login.json()["access_token"]
            await place_calls(config, daemon, outcomes, tmp_path / "calls")
            cards = [await card_of(daemon, http, token, o) for o in outcomes]

            # Nobody else sees the card: the same 404 as for a call that does not exist.
            other = await http.post("/api/auth/login", json={
                "extension": stranger.extension, "password": stranger.password,
                "tenant": "acme"})
            foreign = await http.get(f"/api/calls/{outcomes[0].call_id}", headers={
                "Authorization": f"Bearer {other.json()['access_token']}"})
            missing = await http.get("/api/calls/nope", headers={
                "Authorization": f"Bearer {token}"})
            assert foreign.status_code == missing.status_code == 404
            assert foreign.json() == missing.json()

    heard = {o.call_id: " | ".join(str(line["text"]) for line in daemon.logs
                                   if line.get("call_id") == o.call_id
                                   and line.get("event") == "stt_transcript"
                                   and line.get("is_final")) for o in outcomes}
    report = "\n".join(f"{o.sample.voice} {o.sample.kind}: heard {heard[o.call_id]!r} -> "
                       f"{card}" for o, (_, card) in zip(outcomes, cards, strict=True))
    misheard: list[str] = []
    for outcome, (published, card) in zip(outcomes, cards, strict=True):
        assert {k: published[k] for k in card} == card, report
        assert card["source"] == "rules"
        if outcome.sample.kind == "question":
            assert card["handled_by"] == "answered_from_knowledge", report
            assert (card["callback_requested"], card["callback_number"]) == (False, None), report
            continue
        [(name, number)] = [(n, d) for t, n, d in MESSAGES if t == outcome.sample.reference]
        assert (card["callback_requested"], card["callback_number"]) == (True, number), report
        assert card["handled_by"] == "message_taken", report
        if name in heard[outcome.call_id]:
            assert card["caller_name"] == name, report
        else:   # the recogniser misheard the name ("Enna"): the card keeps what it heard
            misheard.append(outcome.sample.voice)
            assert card["caller_name"] and card["caller_name"] in heard[outcome.call_id], report
    # Whisper tiny.en mishears a short name now and then; the rules cannot know better.
    assert len(misheard) <= MAX_MISHEARD_NAMES, report
