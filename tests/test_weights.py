"""Model weights on disk: the content hash follows the files (the call cache and checkpoints key on it)."""

from llamaduo.weights import fingerprint


def test_fingerprint_follows_the_weights_not_the_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text('{"hidden_size": 8}')
        (d / "model.safetensors").write_bytes(b"\x00" * 64)
        (d / "notes.md").write_text("not a weight file")
    assert fingerprint(str(a)) == fingerprint(str(b)) and len(fingerprint(str(a))) == 16
    (b / "notes.md").write_text("edited")  # not part of the model
    assert fingerprint(str(a)) == fingerprint(str(b))
    (b / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 63)
    assert fingerprint(str(a)) != fingerprint(str(b))
    assert fingerprint("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a Hub id
