import os
import stat
import sys
from pathlib import Path

import pytest

from ezlist.listdir import ListError, ListOptions, edit_list, load_list, make_list, read_key
from ezlist.subscribers import SubscriberDB
from ezlist.templates import TEMPLATE_NAMES, render


def test_make_creates_folder_and_aliases(root: Path):
    cfg = make_list(root, "Sos@Lists.Local.Test",
                    ListOptions(archived=True, prefix="[sos #]", owner="boss@local.test"))
    d = root / "lists" / "sos"
    assert cfg.path == d and cfg.address == "sos@lists.local.test"
    assert (d / "outlocal").read_text() == "sos\n" and (d / "num").read_text() == "0:0\n"
    assert stat.S_IMODE(os.stat(d / "key").st_mode) == 0o600 and len(read_key(d)) == 32
    assert (d / "archived").exists() and (d / "public").exists() and not (d / "modpost").exists()
    assert (d / "archive").is_dir() and (d / "prefix").read_text() == "[sos #]\n"
    assert sorted(p.name for p in (d / "text").iterdir()) == sorted(TEMPLATE_NAMES)
    line = f"|{sys.executable} -m ezlist.deliver {d.resolve()}\n"
    assert (root / "alias" / ".qmail-sos").read_text() == line
    assert (root / "alias" / ".qmail-sos-default").read_text() == line
    assert (root / "alias" / ".qmail-sos-owner").read_text() == "&boss@local.test\n"
    assert SubscriberDB(d / "subscribers.db").count() == 0
    assert not [p for p in (root / "lists").iterdir() if p.name.startswith(".")]
    assert load_list(root, "sos") == cfg


def test_dotted_name_uses_colon_in_dot_qmail(root: Path):
    make_list(root, "team.dev@lists.local.test")
    assert (root / "alias" / ".qmail-team:dev-default").exists()


def test_refuses_existing_and_bad_input(root: Path):
    make_list(root, "sos@lists.local.test")
    with pytest.raises(ListError, match="already exists"):
        make_list(root, "sos@lists.local.test")
    for bad in ["nodomain", "../x@h.test", "a b@h.test", "x@", "-x@h.test", "x-default@h.test",
                "lïst@h.test", "x@h..test"]:
        with pytest.raises(ListError):
            make_list(root, bad)
    for opts in [ListOptions(prefix="[x]\nBcc: evil@x"), ListOptions(unsubscribe_url="http://x"),
                 ListOptions(bounce_threshold=0), ListOptions(owner="not an address")]:
        with pytest.raises(ListError):
            make_list(root, "other@lists.local.test", opts)
    assert not (root / "lists" / "other").exists()


def test_edit_changes_files(root: Path):
    make_list(root, "sos@lists.local.test")
    cfg = edit_list(root, "sos", moderated=True, public=False, trailer="-- \nsos list\n",
                    max_message_size=30000, unsubscribe_url="https://lists.local.test/u")
    d = cfg.path
    assert (d / "modpost").exists() and not (d / "public").exists()
    assert (d / "msgsize").read_text() == "30000:0\n"
    assert (d / "text" / "trailer").read_text() == "-- \nsos list\n"
    assert load_list(root, "sos") == cfg and cfg.flags == "mt"
    cfg = edit_list(root, "sos", trailer="")
    assert not (d / "text" / "trailer").exists() and cfg.options.trailer == ""
    with pytest.raises(ListError, match="unknown list option"):
        edit_list(root, "sos", colour="red")
    with pytest.raises(ListError, match="no such list"):
        load_list(root, "nope")


def test_corrupt_setting_names_the_file(root: Path):
    cfg = make_list(root, "sos@lists.local.test")
    (cfg.path / "bouncetimeout").write_text("ten days\n")
    with pytest.raises(ListError, match="bouncetimeout"):
        load_list(root, "sos")


def test_templates_render_tags_and_sections(root: Path):
    cfg = make_list(root, "sos@lists.local.test", ListOptions(subscribers_only=True))
    text = render(cfg.path, "sub-confirm", A="bob@local.test", R="sos-sc.1.x-bob=local.test@h")
    assert "bob@local.test" in text and "sos@lists.local.test" in text and "<#" not in text
    help_text = render(cfg.path, "help")
    assert "Only subscribers may post" in help_text and "moderator" not in help_text
    (cfg.path / "text" / "help").write_text("A<=mU=>\nmod-only\n<==>\n<#L#> <#Z#>!\n")
    # not a section line (text before it): kept as text; unknown tag <#Z#> becomes ""
    assert render(cfg.path, "help") == "A<=mU=>\nmod-only\nsos !\n"
    (cfg.path / "text" / "help").write_text("<=mU=>\nmod-only\n<==>\n<=u=>\nsubonly\n<==>\n")
    assert render(cfg.path, "help") == "subonly\n"
    assert render(cfg.path, "help", flags="m") == "mod-only\n"
    (cfg.path / "text" / "sub-ok").unlink()  # falls back to the built-in text
    assert "now receives" in render(cfg.path, "sub-ok", A="x@y.test")
    with pytest.raises(KeyError):
        render(cfg.path, "../key")
