"""The frozen SAM2 encoder with per-modality LoRA experts: equal to sam2's own encoder with B = 0, grouped == loop,
official checkpoints load exactly, bad files give clear errors, random init is reproducible."""

from __future__ import annotations

import pytest
import torch
from fixtures.model import TINY_SIZE, random_batch, randomize_lora, tiny_config

from mlesam_core.model import CheckpointError, build_model, load_sam2_weights
from mlesam_core.model.lora import LoRAQKV


def _official_sam2(config, seed: int = 123, size: int = TINY_SIZE):
    """A SAM2 model built by the sam2 package with random weights (non-zero position embeddings)."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    sam = build_sam2(config.sam2.config_name, ckpt_path=None, device="cpu", apply_postprocessing=False,
                     hydra_overrides_extra=[*config.sam2.overrides, f"++model.image_size={size}"])
    with torch.no_grad():
        sam.image_encoder.trunk.pos_embed.normal_(std=0.1)
        sam.image_encoder.trunk.pos_embed_window.normal_(std=0.1)
    return sam


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(sam2 model, path of its checkpoint written the official way) for the tiny config."""
    sam = _official_sam2(tiny_config())
    path = tmp_path_factory.mktemp("ckpt") / "tiny_sam2.pt"
    torch.save({"model": sam.state_dict()}, path)
    return sam, path


def test_encode_with_zero_lora_equals_sam2_image_encoder_backbone_fpn(official):
    sam, path = official
    model = build_model(tiny_config(), sam2_checkpoint=path).eval()
    images, present = random_batch(model.config, batch=2)
    with torch.no_grad():
        levels = model.encode(images, present)
        for m in range(len(model.modalities)):
            expected = sam.image_encoder(images[:, m])["backbone_fpn"]
            assert len(levels) == len(expected) == 3
            for ours, theirs in zip(levels, expected, strict=True):
                assert ours[:, m].shape == theirs.shape
                torch.testing.assert_close(ours[:, m], theirs, rtol=0, atol=1e-6)
    assert [tuple(level.shape[-2:]) for level in levels] == [(16, 16), (8, 8), (4, 4)]


@pytest.mark.parametrize("train", [True, False])
def test_grouped_lora_equals_per_modality_loop_with_nonzero_experts(train):
    model = build_model(tiny_config())
    randomize_lora(model)
    model.train(train)
    images, present = random_batch(model.config, batch=2, seed=1)
    present[0, 1] = False  # one sample lacks depth
    present[:, 3] = False  # nobody has lidar: at inference that chunk is not computed at all
    with torch.no_grad():
        model.lora_grouped = True
        grouped = model.encode(images, present)
        model.lora_grouped = False
        loop = model.encode(images, present)
    for a, b in zip(grouped, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # the experts really differ per modality: the same image through two experts gives two results
    same = images[:, :1].expand(-1, 4, -1, -1, -1).contiguous()
    with torch.no_grad():
        out = model.encode(same, torch.ones_like(present))
    assert not torch.allclose(out[2][:, 0], out[2][:, 1])


def test_lora_adds_scaled_low_rank_update_to_q_and_v_only_on_a_stage_transition_block():
    model = build_model(tiny_config("lora.alpha=16"))  # rank 8 -> scale 2
    layer = next(m for m in model.modules() if isinstance(m, LoRAQKV) and m.in_features != m.head_features)
    randomize_lora(model)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, layer.in_features)  # 2 modality chunks of 2 rows each: modalities 2 and 0
    weight = torch.randn(4, 3, 5, 3 * layer.head_features)
    with model.context.use(torch.tensor([2, 0])):
        out = layer(x)  # autograd path
        with torch.no_grad():
            inference = layer(x)  # in-place path
    torch.testing.assert_close(inference, out.detach(), rtol=1e-6, atol=1e-6)
    (out * weight).sum().backward()
    grads = layer.lora_A.grad.clone(), layer.lora_B.grad.clone()
    layer.lora_A.grad = layer.lora_B.grad = None

    d = layer.head_features
    base = layer.base_layer(x).detach()
    expected = base.clone()
    for chunk, modality in enumerate([2, 0]):
        rows = slice(2 * chunk, 2 * chunk + 2)
        for slot, third in ((0, 0), (1, 2)):  # (q, v) -> thirds 0 and 2 of qkv; k (third 1) untouched
            a, b = layer.lora_A[modality, slot], layer.lora_B[modality, slot]
            update = 2.0 * x[rows] @ a.T @ b.T
            expected = expected.index_add(0, torch.arange(rows.start, rows.stop),
                                          torch.nn.functional.pad(update, (third * d, (2 - third) * d)))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out[..., d:2 * d], base[..., d:2 * d], rtol=0, atol=0)
    (expected * weight).sum().backward()
    torch.testing.assert_close(grads[0], layer.lora_A.grad)
    torch.testing.assert_close(grads[1], layer.lora_B.grad)
    assert grads[0][1].abs().sum() == 0 and grads[0][3].abs().sum() == 0  # modalities 1, 3 not in the batch
    assert layer.lora_B.shape[-2] == d != layer.lora_A.shape[-1]


def test_official_checkpoint_loads_and_every_encoder_tensor_matches_exactly(official):
    sam, path = official
    model = build_model(tiny_config())
    backbone = load_sam2_weights(model, path)
    assert backbone.startswith("tiny_sam2.pt sha256:") and model.backbone_id == backbone
    own, theirs = model.state_dict(), sam.state_dict()
    encoder_keys = [k for k in theirs if k.startswith("image_encoder.")]
    assert encoder_keys
    for key in encoder_keys:
        ours = own[key.replace(".qkv.", ".qkv.base_layer.")]
        assert torch.equal(ours, theirs[key]), key
    # the decoder's SAM2 parts too (frozen core, and the trainable upscaling/conv_s0/conv_s1 start from SAM2)
    assert torch.equal(own["sam_decoder.transformer.layers.0.self_attn.q_proj.weight"],
                       theirs["sam_mask_decoder.transformer.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(own["mask_head.conv_s0.weight"], theirs["sam_mask_decoder.conv_s0.weight"])
    assert torch.equal(own["sam_decoder.pe_layer.positional_encoding_gaussian_matrix"],
                       theirs["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])


def test_corrupt_checkpoint_gives_an_error_naming_the_file(official, tmp_path):
    _, path = official
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="broken.pt: not a readable SAM2 checkpoint"):
        load_sam2_weights(build_model(tiny_config()), broken)
    not_official = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, not_official)
    with pytest.raises(CheckpointError, match=r"plain.pt: not a SAM2 checkpoint: expected \{'model'"):
        load_sam2_weights(build_model(tiny_config()), not_official)
    with pytest.raises(CheckpointError, match="missing.pt: SAM2 checkpoint not found.*dl.fbaipublicfiles"):
        load_sam2_weights(build_model(tiny_config()), tmp_path / "missing.pt")


def test_checkpoint_of_another_variant_names_both_variants(tmp_path):
    from sam2.build_sam import build_sam2

    hiera_t = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu",
                         apply_postprocessing=False, hydra_overrides_extra=["++model.image_size=64"])
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": hiera_t.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"sam2.1_hiera_tiny.pt: checkpoint is Hiera with embed_dim 96, "
                                              r"12 blocks \(T\) but the model is embed_dim 32, 5 blocks"):
        load_sam2_weights(build_model(tiny_config()), path)


def test_checkpoint_missing_a_key_names_it(official, tmp_path):
    sam, _ = official
    state = sam.state_dict()
    del state["sam_mask_decoder.transformer.norm_final_attn.weight"]
    del state["image_encoder.neck.convs.1.conv.bias"]
    path = tmp_path / "partial.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"partial.pt: .*missing keys \(2\): "
                                              r"image_encoder.neck.convs.1.conv.bias, "
                                              r"sam_mask_decoder.transformer.norm_final_attn.weight"):
        load_sam2_weights(build_model(tiny_config()), path)


def test_random_init_is_reproducible_and_has_position_signal():
    a, b = build_model(tiny_config()), build_model(tiny_config())
    frozen = [k for k, p in a.named_parameters() if not p.requires_grad]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in frozen)
    assert a.image_encoder.trunk.pos_embed.abs().sum() > 0  # sam2 leaves it at zero; random init fills it
    other_seed = build_model(tiny_config("random_init_seed=1"))
    assert not torch.equal(other_seed.image_encoder.trunk.patch_embed.proj.weight,
                           a.image_encoder.trunk.patch_embed.proj.weight)
    assert a.backbone_id == "random-init seed 0" and other_seed.backbone_id == "random-init seed 1"


def test_activation_checkpointing_gives_the_same_gradients():
    images, present = random_batch(tiny_config(), batch=1)
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny_config(f"activation_checkpointing={str(flag).lower()}", "aux_head.dropout=0"))
        randomize_lora(model)
        model.train()
        calls: list[int] = []
        model.image_encoder.trunk.blocks[0].register_forward_pre_hook(lambda *args, calls=calls: calls.append(1))
        model(images, present).logits.square().mean().backward()
        assert len(calls) == (2 if flag else 1)  # recomputed in backward when checkpointing
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad})
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-5, atol=1e-6, msg=key)


def test_non_square_inputs_and_bad_sizes():
    model = build_model(tiny_config()).eval()
    images = torch.randn(1, 4, 3, 64, 96)
    with torch.no_grad():
        out = model(images, torch.ones(1, 4, dtype=torch.bool))
    assert out.logits.shape == (1, 25, 64, 96)
    with pytest.raises(ValueError, match="multiples of 32, got 64x80"):
        model(torch.randn(1, 4, 3, 64, 80), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"images: expected a float tensor \[B, 4, 3, H, W\]"):
        model(torch.randn(1, 3, 3, 64, 64), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"present: expected a bool tensor \[1, 4\]"):
        model(images[..., :64], torch.ones(1, 4))
