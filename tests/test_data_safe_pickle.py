"""Restricted unpickling of refs files: data loads, code never runs."""

from __future__ import annotations

import os
import pickle

import pytest

from magnet_hf.data import ReferDataError, safe_load_pickle


class _Payload:
    """Unpickling an instance calls ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_plain_data_round_trips(tmp_path):
    refs = [{"ref_id": 1, "split": "train", "sentences": [{"sent": "a dog", "tokens": ["a", "dog"]}], "score": 0.5}]
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"refs{protocol}.p"
        path.write_bytes(pickle.dumps(refs, protocol=protocol))
        assert safe_load_pickle(path) == refs


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([{"ref_id": 1, "evil": _Payload(f"touch {marker}")}], protocol=2)
    path = tmp_path / "refs(unc).p"
    path.write_bytes(payload)
    with pytest.raises(ReferDataError, match=r"restricted unpickler \(refusing to load global '(posix|os)\.system'"):
        safe_load_pickle(path)
    assert not marker.exists()

    # The payload is real: the standard unpickler would have run the command.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(f"touch {control}")))
    assert control.exists()


@pytest.mark.parametrize("global_name", ["builtins\neval", "builtins\nexec", "subprocess\nPopen", "collections\nOrderedDict"])
def test_any_global_is_refused(tmp_path, global_name):
    path = tmp_path / "refs.p"
    # protocol 0 GLOBAL opcode followed by an empty-tuple call (REDUCE)
    path.write_bytes(b"c" + global_name.encode() + b"\n(tR.")
    with pytest.raises(ReferDataError, match="refusing to load global"):
        safe_load_pickle(path)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(ReferDataError, match="refs pickle not found"):
        safe_load_pickle(tmp_path / "nope.p")
    path = tmp_path / "cut.p"
    path.write_bytes(pickle.dumps(list(range(100)), protocol=2)[:20])
    with pytest.raises(ReferDataError, match="is not a valid refs pickle"):
        safe_load_pickle(path)
