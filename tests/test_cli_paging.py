"""``backup show`` and ``backup list`` a page at a time, as a user runs them (subprocesses):
every entry once, in order, across pages; the cursor survives paths that are not UTF-8."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

from backup.inventory import Inventory
from tests.conftest import Env
from tests.inventory.test_inventory import add, rec
from tests.test_interop import cli

ODD = [b"\xff", b"bad-\xff\xfe", b"caf\xe9", b"a b", b"'q'", b"-n", b"a", b"a/b", b"\x01"]


def test_show_pages_with_a_cursor_that_survives_odd_bytes(env: Env, inventory: Inventory) -> None:
    add(inventory, "a1", datetime(2026, 1, 1, tzinfo=UTC))
    paths = ODD + [b"d/f%d" % i for i in range(3)]
    inventory.add_file_records([rec("a1", p) for p in paths])
    seen: list[bytes] = []
    after: list[str] = []
    for _ in range(len(paths)):
        proc = cli(env, "show", "a1", "--limit", "5", "--json", *after)
        assert proc.returncode == 0, proc.stderr
        d = json.loads(proc.stdout)
        assert d["id"] == "a1" and len(d["entries_list"]) <= 5
        seen += [os.fsencode(e["path"]) for e in d["entries_list"]]
        if d["next_after"] is None:
            break
        assert d["next_after"] == d["entries_list"][-1]["path"]
        after = ["--after", d["next_after"]]
    assert seen == sorted(paths)  # every entry once, in bytewise order, over three pages
    assert len(after) == 2 and os.fsencode(after[1]) == sorted(paths)[9]
    every = json.loads(cli(env, "show", "a1", "--limit", "0", "--json").stdout)
    assert [os.fsencode(e["path"]) for e in every["entries_list"]] == sorted(paths)
    assert every["next_after"] is None
    # the table says how to go on, on stderr
    proc = cli(env, "show", "a1", "--limit", "3")
    assert proc.returncode == 0 and "d/f" not in proc.stdout
    assert "more entries follow: backup show a1 --after " in proc.stderr


def test_list_pages_back_from_the_newest(env: Env, inventory: Inventory) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [f"a{i}" for i in range(5)]
    for i, aid in enumerate(ids):
        add(inventory, aid, t0 + timedelta(hours=i))
    newest = json.loads(cli(env, "list", "--limit", "2", "--json").stdout)
    assert [a["id"] for a in newest] == ids[3:]
    older = json.loads(cli(env, "list", "--limit", "2", "--before", "a3", "--json").stdout)
    assert [a["id"] for a in older] == ids[1:3]
    proc = cli(env, "list", "--limit", "2", "--before", "a1")
    assert proc.returncode == 0 and "a0" in proc.stdout and "older" not in proc.stderr
    proc = cli(env, "list", "--limit", "2")
    assert "older archives: backup list --before a3" in proc.stderr
    assert [a["id"] for a in json.loads(cli(env, "list", "--json").stdout)] == ids


def _shown(env: Env, inventory: Inventory, paths: list[bytes], error: str) -> list[str]:
    """Archive a1 with entries at ``paths`` and a failed job with ``error``; returns the
    stdout of `show a1`, `job ID` and `status`, each checked to exit 0."""
    from backup.jobs import JobStore

    add(inventory, "a1", datetime(2026, 1, 1, tzinfo=UTC))
    inventory.add_file_records([rec("a1", p) for p in paths])
    store = JobStore(inventory)
    job = store.create("backup", policy="p", state="queued", params={})
    assert job is not None
    store.update(job.id, state="failed", error=error)
    outs = []
    for args in (["show", "a1"], ["job", job.id], ["status"]):
        proc = cli(env, *args)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    return outs


def test_tables_and_messages_print_names_as_they_are(env: Env, inventory: Inventory) -> None:
    # file names and job errors are the user's text: rich must not read "[b]" as markup (a
    # closing tag that matches nothing made `show` raise) nor ":smile:" as an emoji code
    odd = [b"a[/b]", b"dir/[red]x[/red].txt", b"c:smile:d", b"[bold]"]
    shown, *job_views = _shown(env, inventory, odd, "cannot read a[/b] :smile: [red]x[/red]")
    for p in odd:
        assert p.decode() in shown
    for out in job_views:
        assert "a[/b] :smile: [red]x[/red]" in out.replace("\n", " "), out


def test_control_characters_in_names_are_shown_escaped(env: Env, inventory: Inventory) -> None:
    # a file name, an S3 key or a job error can hold ESC, BEL or a newline: printed raw to a
    # terminal they would clear the screen, set its title or forge lines (`ls` escapes them);
    # the human output shows them as \xNN, and --json keeps them exact
    odd = [b"x\x1b[2Jy", b"t\x1b]0;title\x07u", b"two\nlines", b"del\x7f", b"c1\xc2\x9b"]
    shown, *job_views = _shown(env, inventory, odd, "cannot read x\x1b[2Jy")
    for raw in ("\x1b", "\x07", "\x7f", "\x9b"):
        assert raw not in shown
    for esc in ("x\\x1b[2Jy", "t\\x1b]0;title\\x07u", "two\\x0alines", "del\\x7f", "c1\\x9b"):
        assert esc in shown
    d = json.loads(cli(env, "show", "a1", "--json").stdout)
    assert sorted(os.fsencode(e["path"]) for e in d["entries_list"]) == sorted(odd)
    for out in job_views:
        assert "\x1b" not in out and "cannot read x\\x1b[2Jy" in out
    # an error line names what the user typed, escaped the same way
    proc = cli(env, "show", "nope\x1b[2J")
    assert proc.returncode == 1
    assert "\x1b[2J" not in proc.stderr and "nope\\x1b[2J" in proc.stderr
