"""What MLE-SAM and the SAM-LoRA baseline share: the frozen SAM2 encoder with per-modality LoRA experts, the
modality-major encoder batch, the frozen prompt-free SAM2 decoder core, input checks, LoRA merging and the SAM2
key map. The SAM2 parts are built outside (`build.build_model`, via `sam2_parts.build_sam2_parts`) and injected,
as sam2's own `SAM2Base` takes its built image encoder."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mlesam_core.model.config import MLESAMConfig
from mlesam_core.model.decoder import ClassMaskHead, PromptFreeSamDecoder
from mlesam_core.model.lora import LoRAQKV, ModalityContext, add_lora
from mlesam_core.model.router import Routing
from mlesam_core.model.sam2_parts import Sam2Parts

if TYPE_CHECKING:
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.sam.mask_decoder import MaskDecoder


@dataclass
class SegmentationOutput:
    """What a forward pass returns; all logits are [B, C, H, W] at the output size (default: the input's)."""

    logits: torch.Tensor  # output.sam_weight * sam_logits + output.aux_weight * aux_logits
    sam_logits: torch.Tensor
    aux_logits: torch.Tensor | None  # None without an aux head
    routing: Routing  # modality weights [B, levels, M] with the level and modality names
    # SAM-LoRA in training mode: each modality model's own output, with `valid` [B] = that modality is present;
    # the loss trains every member on its own prediction, as the paper's separately trained models
    members: list[SegmentationOutput] | None = None
    # MLE-SAM with sensor heads in training mode: each sensor head's prediction from its sensor alone, with
    # `valid` [B] = that sensor is present (the loss's `sensor_heads` term)
    sensor_predictions: list[SegmentationOutput] | None = None
    valid: torch.Tensor | None = None  # [B] the samples this output is scored on (members, sensor predictions)


@dataclass
class ModalityFeatures:
    """Encoder output in the encoder's modality-major layout (no copy into [B, M, ...])."""

    levels: list[torch.Tensor]  # [M', B, 256, h, w] per level, stride 4 to 16
    ids: list[int]  # modality id of each of the M' chunks
    index: torch.Tensor | None  # the same ids on the device; None when they are all M modalities in order
    _chunks: list[tuple[torch.Tensor, ...]] | None = field(default=None, init=False, repr=False, compare=False)

    def chunk(self, j: int) -> tuple[torch.Tensor, ...]:
        """The j-th chunk's maps [B, 256, h, w] at every level. Views of one `unbind` per level, kept for the
        other chunks: in backward their gradients meet in one stack, where indexing each chunk would allocate and
        zero-fill a gradient of the whole level per chunk."""
        if self._chunks is None:
            self._chunks = [level.unbind(0) for level in self.levels]
        return tuple(chunks[j] for chunks in self._chunks)


class LoRASam2Model(nn.Module):
    """Frozen SAM2 image encoder + LoRA experts, and the frozen SAM2 decoder core; subclasses add the heads."""

    def __init__(self, config: MLESAMConfig, parts: Sam2Parts) -> None:
        """Wrap the built SAM2 `parts` (taken over, not copied) for `config`; the heads start from SAM2's decoder."""
        super().__init__()
        self.config = config
        self.modalities = tuple(config.modalities)
        self.image_encoder = parts.image_encoder
        self.context = ModalityContext()
        self.lora_layers: list[LoRAQKV] = add_lora(
            self.trunk, len(self.modalities), config.lora.rank, config.lora.scale,
            config.lora.dropout, self.context, config.experts_per_modality, draw_further_sets=False)
        self.sam_decoder = PromptFreeSamDecoder(parts.prompt_encoder, parts.mask_decoder,
                                                config.decoder.sam_tokens, config.decoder.not_a_point_tokens)
        self.requires_grad_(False)
        for layer in self.lora_layers:
            layer.lora_A.requires_grad_(True)
            layer.lora_B.requires_grad_(True)
        self.activation_checkpointing = config.activation_checkpointing
        self.lora_grouped = config.lora.grouped
        self.backbone_id = parts.backbone_id
        self.size_multiple = math.lcm(32, 4 * self.trunk.window_spec[0])
        self._index_cache: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}  # see `_active_index`
        self.build_heads(parts.mask_decoder)
        # further expert sets (the sensor heads' own, `sensor_heads`) are drawn last: the first set and the paper's
        # heads then start exactly as in the plain model of the same seed, so a recipe with them starts the full
        # set where the paper's recipe does (the larger LoRA tensors would otherwise shift every later draw)
        for expert_set in range(1, config.experts_per_modality):
            for layer in self.lora_layers:
                layer.reset_lora_parameters(expert_set)

    @property
    def trunk(self) -> Hiera:
        """SAM2's Hiera trunk inside the image encoder (a typed view, not a second registration)."""
        return cast("Hiera", self.image_encoder.trunk)

    def build_heads(self, mask_decoder: MaskDecoder) -> None:
        """Create the trainable heads (subclasses); `mask_decoder` is SAM2's, for weights to start from."""
        raise NotImplementedError

    def new_mask_head(self, mask_decoder: MaskDecoder) -> ClassMaskHead:
        """A trainable class-token head whose upscaling/conv_s0/conv_s1 start from SAM2's weights."""
        return ClassMaskHead(mask_decoder, self.config.num_classes)

    # ----------------------------------------------------------------------------------------------- encoder
    def check_inputs(self, images: torch.Tensor, present: torch.Tensor) -> None:
        """ValueError unless images is float [B, M, 3, H, W] (H, W multiples of size_multiple), present bool [B, M]."""
        m = len(self.modalities)
        if images.ndim != 5 or images.shape[1] != m or images.shape[2] != 3 or not images.is_floating_point():
            raise ValueError(f"images: expected a float tensor [B, {m}, 3, H, W] for modalities "
                             f"{list(self.modalities)}, got {images.dtype} {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"images: height and width must be multiples of {self.size_multiple}, got {h}x{w}")
        if present.dtype != torch.bool or tuple(present.shape) != (images.shape[0], m):
            raise ValueError(f"present: expected a bool tensor [{images.shape[0]}, {m}], "
                             f"got {present.dtype} {tuple(present.shape)}")
        if present.device != images.device:
            raise ValueError(f"present is on {present.device} but images are on {images.device}")

    def encode(self, images: torch.Tensor, present: torch.Tensor,
               active: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Per-modality FPN maps before fusion, as SAM2's `backbone_fpn` (before conv_s0/conv_s1): 3 tensors
        [B, M, 256, h, w], stride 4 to 16. Absent modalities are zero; their input content is never read.
        `active`: see `_encode`. With `sensor_heads`, these are the first experts' maps (the full set's)."""
        self.check_inputs(images, present)
        features = self._encode(images, present, active)
        batch, m = present.shape
        mask = present[:, :, None, None, None]
        out = []
        for level in features.levels:
            level = level.transpose(0, 1)  # [B, M', C, h, w]
            if features.index is not None:
                level = level.new_zeros(batch, m, *level.shape[2:]).index_copy(1, features.index, level)
            out.append(torch.where(mask, level, 0))
        return out

    def _encode(self, images: torch.Tensor, present: torch.Tensor,
                active: Sequence[int] | None = None, expert_set: int = 0) -> ModalityFeatures:
        """Run the encoder on the modality-major batch; absent modalities' inputs are zeroed first.

        `active` (inference only, ignored in training): the ids of the modalities present in some sample, known
        on the host (must agree with `present`); None reads them from `present`, a host sync on a GPU.
        `expert_set`: which of each modality's LoRA experts run (1: the sensor heads' own, see `lora.LoRAQKV`).
        """
        batch, m, _, h, w = images.shape
        # Zeroing absent inputs before anything runs keeps NaN/Inf in an absent modality out of every sum
        # (downstream, absent modalities get weight 0 and their router embedding is zeroed).
        images = torch.where(present[:, :, None, None, None], images, 0)
        # Training runs every modality chunk (no host sync, every expert in the graph for DDP); inference runs
        # only the modalities present in some sample.
        if self.training:
            ids = list(range(m))
        elif active is None:
            ids = [i for i, p in enumerate(present.any(dim=0).tolist()) if p]
        else:
            ids = sorted(active)
        experts = [expert_set * m + i for i in ids]
        self._check_merged(ids, experts)
        index = None if len(ids) == m else self._active_index(tuple(ids), images.device)
        expert_index = None if experts == list(range(m)) else self._active_index(tuple(experts), images.device)
        chunks = (images if index is None else images.index_select(1, index)).transpose(0, 1)  # [M', B, 3, H, W]
        if self.lora_grouped:
            with self.context.use(expert_index):
                levels = self._run_encoder(chunks.reshape(len(ids) * batch, 3, h, w))
            levels = [f.view(len(ids), batch, *f.shape[1:]) for f in levels]
        else:  # reference path: one encoder pass per modality
            runs = []
            for j, expert in enumerate(experts):
                with self.context.use(self._active_index((expert,), images.device)):
                    runs.append(self._run_encoder(chunks[j]))
            levels = [torch.stack(per_level) for per_level in zip(*runs, strict=True)]
        return ModalityFeatures(levels=levels, ids=ids, index=index)

    def _active_index(self, ids: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """`ids` as a LongTensor on `device`, made once per subset: no host-to-device copy per call, and a
        fixed tensor that CUDA-graph capture can bake in. While traced (torch.export, torch.compile) the ids become
        a constant of the graph instead: a tensor cached from inside a trace would be a fake one."""
        if torch.compiler.is_compiling():
            return torch.tensor(ids, dtype=torch.long, device=device)
        key = (ids, device)
        if key not in self._index_cache:
            with torch.inference_mode(False):  # a normal tensor: autograd may save it (eval mode with gradients)
                self._index_cache[key] = torch.tensor(ids, dtype=torch.long, device=device)
        return self._index_cache[key]

    def _check_merged(self, ids: list[int], experts: list[int]) -> None:
        """ValueError when a merged expert (`merge_lora`) cannot give this forward pass's result (`ids`: the
        modalities it encodes, `experts`: the LoRA experts it runs)."""
        name = self.merged_modality
        if name is None:
            return
        if self.training:
            raise ValueError(f"the {name!r} LoRA expert is merged into the frozen weights (merge_lora): a merged "
                             f"model cannot train; call unmerge_lora() on it before model.train()")
        others = [self.modalities[i] for i in ids if self.modalities[i] != name]
        if others:
            raise ValueError(f"the {name!r} LoRA expert is merged into the frozen weights (merge_lora), but "
                             f"{others} {'is' if len(others) == 1 else 'are'} present too: a merged model runs "
                             f"{name!r} alone; call unmerge_lora() on it to run several modalities")
        if experts != [self.lora_layers[0].merged]:  # merge_lora chose the expert that serves the sensor alone
            raise ValueError(f"the {name!r} LoRA expert merged into the frozen weights (merge_lora) is not the one "
                             f"this pass runs (experts {experts}); call unmerge_lora() first")

    def _run_encoder(self, x: torch.Tensor) -> list[torch.Tensor]:
        """SAM2's ImageEncoder (trunk + FPN neck, scalp 1) on a modality-major batch -> backbone_fpn, finest first.

        The trunk loop is Hiera.forward spelled out so that blocks can be activation-checkpointed; the tests
        compare it with sam2's own `image_encoder(x)["backbone_fpn"]`.
        """
        trunk = self.trunk
        x = trunk.patch_embed(x)
        x = x + trunk._get_pos_embed((x.shape[1], x.shape[2]))
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        stages = []
        for i, block in enumerate(trunk.blocks):
            x = self._checkpointed(block, x) if recompute else block(x)
            if i in trunk.stage_ends:
                stages.append(x.permute(0, 3, 1, 2))
        features, _ = self.image_encoder.neck(stages)
        return features[: -self.image_encoder.scalp]

    def _checkpointed(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        index = self.context.index  # recomputation in backward must see the same modality chunks

        def run(t: torch.Tensor) -> torch.Tensor:
            with self.context.use(index):
                return block(t)

        return checkpoint(run, x, use_reentrant=False)

    # -------------------------------------------------------------------------------------------- LoRA merge
    def merge_lora(self, modality: str) -> None:
        """Fold `modality`'s expert into the frozen qkv weights of every block for deployment (eval mode only): the
        encoder then costs no LoRA matmul. A merged model refuses training and inputs with another modality
        present; `unmerge_lora` restores the original weights exactly."""
        if modality not in self.modalities:
            raise ValueError(f"merge_lora: unknown modality {modality!r}: this model takes {list(self.modalities)}")
        if self.training:
            raise ValueError("merge_lora: the model is in training mode; merge only for inference (call "
                             "model.eval() first): training a merged model would update experts that no longer act")
        current = self.merged_modality
        if current is not None:
            raise ValueError(f"merge_lora: the {current!r} expert is already merged; call unmerge_lora() first")
        index = self.modalities.index(modality)
        if self.config.experts_per_modality > 1 and len(self.modalities) > 1:
            index += len(self.modalities)  # a sensor alone lacks the others: the sensor heads' own expert serves it
        for layer in self.lora_layers:
            layer.merge(index)

    def unmerge_lora(self) -> None:
        """Restore the frozen qkv weights exactly as they were before `merge_lora` (no-op when nothing is merged)."""
        for layer in self.lora_layers:
            layer.unmerge()

    @property
    def merged_modality(self) -> str | None:
        """The modality whose expert is merged into the weights, or None."""
        index = self.lora_layers[0].merged if self.lora_layers else None
        return None if index is None else self.modalities[index % len(self.modalities)]

    # ------------------------------------------------------------------------------------------------ output
    def output_size(self, images: torch.Tensor, size: tuple[int, int] | None) -> tuple[int, int]:
        """The (H, W) a forward pass returns logits at: `size` when given (inference asks for the sensor's size,
        so the logits are resized once), else the input's (training, evaluation at the label size)."""
        if size is None:
            return (images.shape[-2], images.shape[-1])
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ValueError(f"output_size: expected (height, width) as two positive ints, got {size!r}")
        return (size[0], size[1])

    def combine(self, sam: torch.Tensor, aux: torch.Tensor | None, size: tuple[int, int],
                routing: Routing) -> SegmentationOutput:
        """Upsample stride-4 logits to `size` and weight them (Eq. 13)."""
        sam = F.interpolate(sam, size=size, mode="bilinear", align_corners=False)
        logits = self.config.output.sam_weight * sam
        if aux is not None:
            aux = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
            logits = logits + self.config.output.aux_weight * aux
        return SegmentationOutput(logits=logits, sam_logits=sam, aux_logits=aux, routing=routing)

    def member_pathways(self, mask_heads: nn.ModuleList, aux_heads: nn.ModuleList | None,
                        features: ModalityFeatures, j: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Y_sam, Y_aux) of the j-th chunk of `features`, by its modality's own heads on its maps alone."""
        m = features.ids[j]
        ffp, ifp, sfm = features.chunk(j)
        sam = mask_heads[m](self.sam_decoder, sfm, ifp, ffp)
        aux = aux_heads[m]([ffp, ifp, sfm]) if aux_heads is not None else None
        return sam, aux

    def average_members(self, features: ModalityFeatures, present: torch.Tensor, size: tuple[int, int],
                        mask_heads: nn.ModuleList, aux_heads: nn.ModuleList | None, levels: tuple[str, ...],
                        keep_members: bool) -> SegmentationOutput:
        """Late fusion, SAM-LoRA's rule: each modality's (Y_sam, Y_aux) by its own heads (`member_pathways`),
        averaged over each sample's present modalities. The average is linear, so averaging the pathways before
        `combine` equals averaging the logits. `routing` holds the averaging weights at each of `levels`; with
        `keep_members`, `members` also holds each modality's own output, valid where that modality is present
        (what the members' losses train on)."""
        weights = present.float() / present.sum(dim=1, keepdim=True).clamp_min(1)
        routing = Routing.same_at_every_level(weights, levels, self.modalities)
        sam: torch.Tensor | None = None
        aux: torch.Tensor | None = None
        members: list[SegmentationOutput] | None = [] if keep_members else None
        for j, m in enumerate(features.ids):
            sam_m, aux_m = self.member_pathways(mask_heads, aux_heads, features, j)
            w = weights[:, m, None, None, None]
            sam = w.to(sam_m.dtype) * sam_m if sam is None else sam + w.to(sam_m.dtype) * sam_m
            if aux_m is not None:
                aux = w.to(aux_m.dtype) * aux_m if aux is None else aux + w.to(aux_m.dtype) * aux_m
            if members is not None:
                member = self.combine(sam_m, aux_m, size, routing)
                member.valid = present[:, m]
                members.append(member)
        assert sam is not None  # at least one modality ran (check_inputs / _encode)
        output = self.combine(sam, aux, size, routing)
        output.members = members
        return output

    # ---------------------------------------------------------------------------------------------- weights
    def mask_head_prefixes(self) -> list[str]:
        """State-dict prefixes of the class-token heads (subclasses)."""
        raise NotImplementedError

    def sam2_key_map(self) -> dict[str, list[str]]:
        """Official SAM2 checkpoint key -> this model's state-dict keys it fills (LoRA tensors excluded)."""
        pairs = [
            ("image_encoder.", "image_encoder."),
            ("sam_mask_decoder.transformer.", "sam_decoder.transformer."),
            ("sam_mask_decoder.iou_token.", "sam_decoder.iou_token."),
            ("sam_mask_decoder.obj_score_token.", "sam_decoder.obj_score_token."),
            ("sam_prompt_encoder.pe_layer.", "sam_decoder.pe_layer."),
            ("sam_prompt_encoder.no_mask_embed.", "sam_decoder.no_mask_embed."),
            ("sam_prompt_encoder.not_a_point_embed.", "sam_decoder.not_a_point_embed."),
        ]
        for head in self.mask_head_prefixes():
            pairs += [(f"sam_mask_decoder.{name}.", f"{head}.{name}.")
                      for name in ("output_upscaling", "conv_s0", "conv_s1")]
        key_map: dict[str, list[str]] = {}
        for key in self.state_dict():
            if ".lora_" in key:
                continue
            for ckpt_prefix, own_prefix in pairs:
                if key.startswith(own_prefix):
                    ckpt_key = ckpt_prefix + key[len(own_prefix):].replace(".qkv.base_layer.", ".qkv.")
                    key_map.setdefault(ckpt_key, []).append(key)
                    break
        return key_map

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors: parameters that require grad plus the buffers of modules that own such
        parameters (BatchNorm running statistics of the aux head)."""
        keys: set[str] = set()
        for module_name, module in self.named_modules():
            own = list(module.named_parameters(recurse=False))
            if any(p.requires_grad for _, p in own):
                prefix = f"{module_name}." if module_name else ""
                keys.update(prefix + n for n, p in own if p.requires_grad)
                keys.update(prefix + n for n, _ in module.named_buffers(recurse=False))
        return {k: v for k, v in self.state_dict().items() if k in keys}


__all__ = ["LoRASam2Model", "SegmentationOutput", "ModalityFeatures"]
