import json

import pytest

from recpar.published import INDEX, PublishError, expand_inputs, publish


def _records(tmp_path, names):
    paths = []
    for name in names:
        p = tmp_path / "results" / "ds" / "sweep" / name / "seed0" / "record.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"run_id": name}))
        paths.append(p)
    return paths


def test_publish_copies_in_order_and_expand_gives_them_back(tmp_path):
    paths = _records(tmp_path, ["zeta", "alpha"])  # rendered in this order, not sorted
    out = tmp_path / "pub"
    publish(paths, out, keep_parts=3)
    assert json.loads((out / INDEX).read_text())["files"] == [
        "zeta/seed0/record.json", "alpha/seed0/record.json"]
    back = expand_inputs([out])
    assert [p.read_text() for p in back] == [p.read_text() for p in paths]


def test_republishing_removes_what_is_no_longer_an_input(tmp_path):
    out = tmp_path / "pub"
    publish(_records(tmp_path, ["a", "b"]), out, keep_parts=3)
    publish(_records(tmp_path, ["a"]), out, keep_parts=3)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "a/seed0/record.json", INDEX]
    assert not (out / "b").exists()


def test_republishing_a_folder_onto_itself_changes_nothing(tmp_path):
    out = tmp_path / "pub"
    publish(_records(tmp_path, ["a", "b"]), out, keep_parts=3)
    before = {p: p.read_text() for p in out.rglob("*") if p.is_file()}
    publish(expand_inputs([out]), out, keep_parts=3)
    assert {p: p.read_text() for p in out.rglob("*") if p.is_file()} == before


def test_two_inputs_with_one_published_name_are_refused(tmp_path):
    a = _records(tmp_path / "x", ["a"])[0]
    b = _records(tmp_path / "y", ["a"])[0]
    with pytest.raises(PublishError, match="would both be published"):
        publish([a, b], tmp_path / "pub", keep_parts=3)


def test_a_folder_without_an_index_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        expand_inputs([tmp_path])


def test_restore_copies_a_publication_back_and_keeps_what_is_there(tmp_path):
    from recpar.published import restore

    pub = tmp_path / "pub"
    publish(_records(tmp_path / "src", ["a", "b"]), pub, keep_parts=3)
    dest = tmp_path / "results" / "ds" / "resumed"
    (dest / "a" / "seed0").mkdir(parents=True)
    mine = dest / "a" / "seed0" / "record.json"
    mine.write_text("mine")  # a record already there is never overwritten
    restored, kept = restore(pub, dest)
    assert kept == [mine] and mine.read_text() == "mine"
    assert [p.relative_to(dest).as_posix() for p in restored] == ["b/seed0/record.json"]
    assert restored[0].read_text() == (pub / "b" / "seed0" / "record.json").read_text()
