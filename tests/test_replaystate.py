"""Tests for vpncrypt.daemon.replaystate: the replay-state files and their directory."""

import os

import pytest


def test_replay_state_files_take_turns_and_survive_a_torn_save(tmp_path):
    from vpncrypt.daemon.replaystate import ReplayStateFiles

    path = str(tmp_path / "vpn0.replay")
    files = ReplayStateFiles(path)
    for p in (path, path + ".1"):
        assert os.stat(p).st_mode & 0o777 == 0o600
    assert files.load() == ({}, None)  # new, empty files: nothing to restore, no warning
    files.save({"1": 1764100000, "7": 1764100005})
    files.save({"1": 1764100010, "7": 1764100015, "9": 5})
    files.close()
    # Each save went to the other file; a fresh start takes the newer one.
    assert open(path + ".1").read().startswith("1 1764100000\n")
    assert open(path).read().startswith("1 1764100010\n")
    again = ReplayStateFiles(path)
    assert again.load() == ({"1": 1764100010, "7": 1764100015, "9": 5}, None)
    # A third save cut short (kill -9 mid-write): a new beginning over the old file,
    # no complete trailer. The save before it is still there and is what counts.
    with open(path + ".1", "r+b") as f:
        f.write(b"1 1764100020\n7 17641")
    assert ReplayStateFiles(path).load() == ({"1": 1764100010, "7": 1764100015, "9": 5}, None)
    # A flipped bit in the other fails its CRC: now neither file is whole (a damaged
    # disk, files from elsewhere), so nothing is restored, and that is said.
    data = bytearray(open(path, "rb").read())
    data[3] ^= 1
    open(path, "wb").write(bytes(data))
    assert ReplayStateFiles(path).load() == ({}, "no complete save")


def test_replay_state_files_refuse_a_symlink(tmp_path):
    from vpncrypt.daemon.replaystate import ReplayStateError, ReplayStateFiles

    (tmp_path / "elsewhere").write_text("")
    os.symlink(tmp_path / "elsewhere", tmp_path / "vpn0.replay")
    with pytest.raises(ReplayStateError, match=r"^replay state .*vpn0\.replay: "):
        ReplayStateFiles(str(tmp_path / "vpn0.replay"))


def test_state_directory_must_be_ours_alone(tmp_path):
    from vpncrypt.daemon.runtime import FatalError, check_state_dir

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    check_state_dir(str(state))
    os.chmod(state, 0o770)
    with pytest.raises(FatalError, match=r"mode 0770: it must be uid \d+'s, writable by it alone"):
        check_state_dir(str(state))
    if os.geteuid() == 0:
        # What an older vpncryptd left: the directory and its files handed to `nobody`.
        # Root takes them back (a symlink is changed itself, not what it points to).
        (state / "vpn0.replay").write_text("1 1764000000\n")
        (tmp_path / "elsewhere").write_text("")
        os.symlink(tmp_path / "elsewhere", state / "vpn1.replay")
        for path in (state / "vpn0.replay", tmp_path / "elsewhere"):
            os.chown(path, 65534, 65534)
        os.lchown(state / "vpn1.replay", 65534, 65534)
        os.chown(state, 65534, 65534)
        os.chmod(state, 0o755)
        check_state_dir(str(state))
        assert (state.stat().st_uid, state.stat().st_mode & 0o777) == (0, 0o700)
        assert (state / "vpn0.replay").stat().st_uid == 0
        assert os.lstat(state / "vpn1.replay").st_uid == 0
        assert (tmp_path / "elsewhere").stat().st_uid == 65534
