"""Benchmark suites as data: the convolutions that ``mcconv bench`` times, ``tune`` tunes and
``inspect`` compiles.

Each suite is a list of layers: :class:`Conv` (a ``mcconv.conv2d`` call: NCHW sizes, square
kernels unless noted) or :class:`Conv3dLayer` (a ``mcconv.conv3d`` call); ``count`` is how many
times the layer occurs in the network, for weighting totals. Output sizes and FLOPs come from
the library's own description of a call (:class:`mcconv.ConvSpec`, :class:`mcconv.Conv3dSpec`),
so a layer means exactly what mcconv would make of it. The tools reach the operation only
through a layer's ``op``, ``run``, ``torch_run`` and ``explain``, so a layer type is all a new
operation needs here.
"""
from dataclasses import dataclass, replace
from functools import cached_property

import torch
import torch.nn.functional as F

import mcconv
from mcconv import ConvSpec


class _Layer:
    """What every layer type shares: its compact description and a copy at another batch size."""

    _symbol = "*"  # between the input's and the weight's shapes in describe()

    def describe(self) -> str:
        """Compact shape text, e.g. ``32x64x56x56 * 64x64x3x3 s1 p1``."""
        text = "x".join(map(str, self.input_shape)) + f" {self._symbol} " + "x".join(map(str, self.weight_shape))
        text += f" s{_fmt(self.stride)} p{_fmt(self.padding)}"
        if any(getattr(self, "output_padding", ())):
            text += f" o{_fmt(self.output_padding)}"
        if any(d != 1 for d in self.dilation):
            text += f" d{_fmt(self.dilation)}"
        if self.groups != 1:
            text += f" g{self.groups}"
        return text

    def with_batch(self, n: int):
        return replace(self, n=n)


@dataclass(frozen=True)
class Conv(_Layer):
    """One convolution problem: sizes, stride, padding (anything mcconv.conv2d takes), dilation, groups."""

    name: str
    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    count: int = 1

    @property
    def input_shape(self) -> tuple:
        return (self.n, self.c, self.h, self.w)

    @property
    def weight_shape(self) -> tuple:
        return (self.k, self.c // self.groups, self.kh, self.kw)

    @cached_property
    def spec(self) -> ConvSpec:
        """mcconv's description of this call (raises what mcconv.conv2d would raise)."""
        return ConvSpec.from_shapes(self.input_shape, self.weight_shape, self.stride, self.padding, self.dilation,
                                    self.groups)

    @property
    def output_hw(self) -> tuple:
        return self.spec.p, self.spec.q

    @property
    def output_shape(self) -> tuple:
        return self.spec.output_shape

    @property
    def flops(self) -> int:
        """2*N*K*P*Q*(C/groups)*KH*KW: multiplications and additions counted separately."""
        return self.spec.flops


    # -- what the tools call: the operation, torch's, and the dispatch record

    op = "conv2d"
    memory_format = torch.channels_last  # the "channels_last" layout of this layer's tensors
    flops_formula = "2*N*K*P*Q*(C/groups)*KH*KW"
    padding_order = "(top, bottom, left, right)"

    @property
    def conv_args(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.groups

    def run(self, x, w, b=None, activation=None):
        return mcconv.conv2d(x, w, b, *self.conv_args, activation=activation)

    def torch_run(self, x, w, b=None):
        return F.conv2d(x, w, b, *self.conv_args)

    def explain(self, x, w, b=None, *, activation=None, device_name=None, direction="forward"):
        return mcconv.explain(x, w, b, *self.conv_args, activation=activation, device_name=device_name,
                              direction=direction)


@dataclass(frozen=True)
class Conv3dLayer(_Layer):
    """One 3-D convolution problem (a ``mcconv.conv3d`` call): NCDHW sizes, (depth, height, width)
    stride, padding (anything mcconv.conv3d takes) and dilation, groups."""

    name: str
    n: int
    c: int
    d: int
    h: int
    w: int
    k: int
    kd: int
    kh: int
    kw: int
    stride: tuple = (1, 1, 1)
    padding: tuple = (0, 0, 0)
    dilation: tuple = (1, 1, 1)
    groups: int = 1
    count: int = 1

    op = "conv3d"
    memory_format = torch.channels_last_3d
    flops_formula = "2*N*K*D*P*Q*(C/groups)*KD*KH*KW"
    padding_order = "(front, back, top, bottom, left, right)"

    @property
    def input_shape(self) -> tuple:
        return (self.n, self.c, self.d, self.h, self.w)

    @property
    def weight_shape(self) -> tuple:
        return (self.k, self.c // self.groups, self.kd, self.kh, self.kw)

    @cached_property
    def spec(self):
        """mcconv's description of this call (raises what mcconv.conv3d would raise)."""
        from mcconv.conv3d import spec_from_shapes  # the module (mcconv.conv3d is the function)

        return spec_from_shapes(self.input_shape, self.weight_shape, self.stride, self.padding, self.dilation,
                                self.groups)

    @property
    def output_shape(self) -> tuple:
        return self.spec.output_shape

    @property
    def flops(self) -> int:
        return self.spec.flops

    @property
    def conv_args(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.groups


    def run(self, x, w, b=None, activation=None):
        return mcconv.conv3d(x, w, b, *self.conv_args, activation=activation)

    def torch_run(self, x, w, b=None):
        return F.conv3d(x, w, b, *self.conv_args)

    def explain(self, x, w, b=None, *, activation=None, device_name=None, direction="forward"):
        return mcconv.explain3d(x, w, b, *self.conv_args, activation=activation, device_name=device_name,
                                direction=direction)

    def im2col_layer(self, itemsize: int = 2) -> Conv:
        """The 2-D problem of this call's depth im2col (:func:`mcconv.conv3d_views`) for a dtype of
        ``itemsize`` bytes: a batch of N * D_out images of C * kD channels (one group's padded to
        whole 16 bytes where the forward's im2col pads them). The depth kernel's gradients run on it; calls
        of fewer than 16 channels per group run their forward on it too."""
        from mcconv.conv3d import im2col_channels, takes_depth_kernel

        spec = self.spec
        channels = self.c * self.kd  # the depth kernel's gradient gathers without padding
        if not takes_depth_kernel(spec):
            channels = im2col_channels(channels, self.groups, itemsize)
        return Conv(f"{self.name}.im2col", self.n * spec.od, channels, self.h, self.w, self.k, self.kh, self.kw,
                    spec.stride[1:], spec.padding[2:], spec.dilation[1:], self.groups, self.count)


@dataclass(frozen=True)
class ConvTranspose2dLayer(_Layer):
    """One transposed convolution (a ``mcconv.conv_transpose2d`` call): input ``(N, C, H, W)``,
    weight ``(C, K / groups, KH, KW)``, output ``(N, K, H_out, W_out)``; stride, padding,
    output_padding and dilation as (height, width) pairs.

    mcconv runs it as the input gradient of the convolution it transposes (:meth:`forward_layer`:
    input ``(N, K, H_out, W_out)``, weight the same tensor, output ``(N, C, H, W)``), so its
    FLOPs, its spec and its tuning problems are that convolution's."""

    name: str
    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    output_padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    count: int = 1

    op = "conv_transpose2d"
    _symbol = "T*"  # describe(): e.g. ``8x64x14x14 T* 64x32x4x4 s2 p1``
    memory_format = torch.channels_last
    flops_formula = "2*N*C*H*W*(K/groups)*KH*KW (the transposed convolution's)"
    padding_order = "(top, bottom, left, right) of the convolution it transposes"

    @property
    def input_shape(self) -> tuple:
        return (self.n, self.c, self.h, self.w)

    @property
    def weight_shape(self) -> tuple:
        return (self.c, self.k // self.groups, self.kh, self.kw)

    @property
    def output_hw(self) -> tuple:
        return tuple((size - 1) * s - 2 * p + d * (k - 1) + o + 1 for size, s, p, d, k, o in zip(
            (self.h, self.w), self.stride, self.padding, self.dilation, (self.kh, self.kw), self.output_padding))

    @property
    def output_shape(self) -> tuple:
        return (self.n, self.k, *self.output_hw)

    def forward_layer(self) -> Conv:
        """The convolution this call transposes (its input gradient is this call)."""
        return Conv(f"{self.name}.forward", self.n, self.k, *self.output_hw, self.c, self.kh, self.kw, self.stride,
                    self.padding, self.dilation, self.groups, self.count)

    @cached_property
    def spec(self) -> ConvSpec:
        """The transposed convolution's description (that of :meth:`forward_layer`); raises what
        mcconv would raise for an invalid geometry."""
        if min(self.output_hw) < 1:
            raise ValueError(f"{self.name}: the output would be {self.output_hw}: empty")
        return self.forward_layer().spec

    @property
    def flops(self) -> int:
        return self.spec.flops

    @property
    def conv_args(self) -> tuple:
        return self.stride, self.padding, self.output_padding, self.groups, self.dilation


    def run(self, x, w, b=None, activation=None):
        return mcconv.conv_transpose2d(x, w, b, *self.conv_args, activation=activation)

    def torch_run(self, x, w, b=None):
        return F.conv_transpose2d(x, w, b, *self.conv_args)

    def explain(self, x, w, b=None, *, activation=None, device_name=None, direction="forward"):
        if direction != "forward":  # the backward's kernels: the transposed convolution's own pair
            raise ValueError("explain of a transposed convolution: forward only")
        return mcconv.explain_transpose2d(x, w, b, *self.conv_args, activation=activation, device_name=device_name)


def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    if len(value) in (2, 3) and len(set(value)) == 1:
        return str(value[0])
    return ",".join(map(str, value))


def conv(name, n, c, h, k, r, stride=1, padding=None, groups=1, count=1, w=None) -> Conv:
    """A square-image, square-kernel layer; padding defaults to r // 2 ("same" for odd r)."""
    padding = r // 2 if padding is None else padding
    return Conv(name, n, c, h, h if w is None else w, k, r, r, (stride, stride), (padding, padding),
                groups=groups, count=count)


def resnet50(batch: int = 32) -> list[Conv]:
    """The 23 unique convolutions of torchvision's ResNet-50 (v1.5: stride on the 3x3) at 224x224.

    Bottleneck widths 64/128/256/512, expansion 4, blocks 3/4/6/3; ``count`` sums to its 53 convs.
    """
    n = batch
    layers = [conv("conv1", n, 3, 224, 64, 7, stride=2, padding=3)]
    in_ch, hw = 64, 56  # after the stem's max-pool
    for stage, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], 2):
        out_ch, s = width * 4, f"l{stage - 1}"
        out_hw = hw // stride
        layers.append(conv(f"{s}.0.conv1", n, in_ch, hw, width, 1))
        layers.append(conv(f"{s}.0.conv2", n, width, hw, width, 3, stride=stride,
                           count=1 if stride > 1 else blocks))
        # conv3 (width -> 4*width) recurs in every block; in stage 1 the downsample has its shape too.
        layers.append(conv(f"{s}.0.conv3", n, width, out_hw, out_ch, 1, count=blocks + (stride == 1)))
        if stride > 1:
            layers.append(conv(f"{s}.0.downsample", n, in_ch, hw, out_ch, 1, stride=stride, padding=0))
        layers.append(conv(f"{s}.1.conv1", n, out_ch, out_hw, width, 1, count=blocks - 1))
        if stride > 1:
            layers.append(conv(f"{s}.1.conv2", n, width, out_hw, width, 3, count=blocks - 1))
        in_ch, hw = out_ch, out_hw
    return layers


# torchvision MobileNetV2 (width 1.0, 224x224): depthwise 3x3 (channels, input size, stride, count)
_MBV2_DEPTHWISE = [(32, 112, 1, 1), (96, 112, 2, 1), (144, 56, 1, 1), (144, 56, 2, 1), (192, 28, 1, 2),
                   (192, 28, 2, 1), (384, 14, 1, 4), (576, 14, 1, 2), (576, 14, 2, 1), (960, 7, 1, 3)]
# and its pointwise 1x1 convolutions (in, out, size, count): expand, project and the final 1x1
_MBV2_POINTWISE = [(32, 16, 112, 1), (16, 96, 112, 1), (96, 24, 56, 1), (24, 144, 56, 2), (144, 24, 56, 1),
                   (144, 32, 28, 1), (32, 192, 28, 3), (192, 32, 28, 2), (192, 64, 14, 1), (64, 384, 14, 4),
                   (384, 64, 14, 3), (384, 96, 14, 1), (96, 576, 14, 3), (576, 96, 14, 2), (576, 160, 7, 1),
                   (160, 960, 7, 3), (960, 160, 7, 2), (960, 320, 7, 1), (320, 1280, 7, 1)]


def mobilenetv2(batch: int = 32) -> list[Conv]:
    """MobileNetV2's 10 unique depthwise 3x3 layers and 19 unique pointwise 1x1 layers (stem excluded)."""
    layers = [conv(f"dw{c}_{h}_s{s}", batch, c, h, c, 3, stride=s, groups=c, count=cnt)
              for c, h, s, cnt in _MBV2_DEPTHWISE]
    layers += [conv(f"pw{c}_{k}_{h}", batch, c, h, k, 1, count=cnt) for c, k, h, cnt in _MBV2_POINTWISE]
    return layers


# A representative SUBSET of DeepBench's convolution problems (baidu-research/DeepBench,
# code/kernels/conv_problems.h), in its order: W, H, C, N, K, S (filter width), R (filter
# height), pad_w, pad_h, stride_w, stride_h.
_DEEPBENCH_TRAINING = [
    (700, 161, 1, 16, 32, 20, 5, 0, 0, 2, 2), (341, 79, 32, 16, 32, 10, 5, 0, 0, 2, 2),
    (480, 48, 1, 16, 16, 3, 3, 1, 1, 1, 1), (240, 24, 16, 16, 32, 3, 3, 1, 1, 1, 1),
    (108, 108, 3, 8, 64, 3, 3, 1, 1, 2, 2), (54, 54, 64, 8, 64, 3, 3, 1, 1, 1, 1),
    (224, 224, 3, 16, 64, 3, 3, 1, 1, 1, 1), (112, 112, 64, 16, 128, 3, 3, 1, 1, 1, 1),
    (56, 56, 128, 16, 256, 3, 3, 1, 1, 1, 1), (28, 28, 256, 16, 512, 3, 3, 1, 1, 1, 1),
    (14, 14, 512, 16, 512, 3, 3, 1, 1, 1, 1), (224, 224, 3, 16, 64, 7, 7, 3, 3, 2, 2),
    (28, 28, 192, 16, 32, 5, 5, 2, 2, 1, 1), (14, 14, 512, 16, 48, 5, 5, 2, 2, 1, 1),
    (7, 7, 832, 16, 256, 1, 1, 0, 0, 1, 1), (350, 80, 64, 16, 128, 5, 5, 1, 1, 2, 2),
    (175, 40, 128, 16, 128, 3, 3, 1, 1, 1, 1), (56, 56, 256, 16, 128, 1, 1, 0, 0, 2, 2),
    (14, 14, 1024, 16, 256, 1, 1, 0, 0, 1, 1), (7, 7, 2048, 16, 512, 1, 1, 0, 0, 1, 1),
]
_DEEPBENCH_INFERENCE = [
    (700, 161, 1, 1, 32, 20, 5, 0, 0, 2, 2), (341, 79, 32, 4, 32, 10, 5, 0, 0, 2, 2),
    (112, 112, 64, 1, 128, 3, 3, 1, 1, 1, 1), (14, 14, 512, 1, 512, 3, 3, 1, 1, 1, 1),
    (28, 28, 512, 1, 128, 1, 1, 0, 0, 1, 1), (7, 7, 832, 2, 128, 5, 5, 2, 2, 1, 1),
]


def _deepbench_conv(prefix, i, row, batch):
    w, h, c, n, k, s, r, pad_w, pad_h, stride_w, stride_h = row
    return Conv(f"{prefix}{i:02d}", batch or n, c, h, w, k, r, s, (stride_h, stride_w), (pad_h, pad_w))


def deepbench(batch: int | None = None) -> list[Conv]:
    """A representative subset (26 shapes) of DeepBench's training and inference-server conv problems.

    Each keeps DeepBench's own batch size unless ``batch`` is given.
    """
    return ([_deepbench_conv("train", i, row, batch) for i, row in enumerate(_DEEPBENCH_TRAINING)]
            + [_deepbench_conv("infer", i, row, batch) for i, row in enumerate(_DEEPBENCH_INFERENCE)])


def seed(batch: int = 1) -> list[Conv]:
    """The seed text's example: 256x256 image, 5x5 kernel, 128 in and out channels (about 53.7 GFLOP)."""
    return [conv("seed_5x5", batch, 128, 256, 128, 5, padding=2)]


def conv1d_layer(name, n, c, length, k, size, stride=1, padding=0, groups=1, count=1) -> Conv:
    """A 1-D convolution as mcconv runs it: the 2-D kernels on a unit-height view (H = KH = 1)."""
    return Conv(name, n, c, 1, length, k, 1, size, (1, stride), (0, padding), groups=groups, count=count)


# wav2vec 2.0's feature encoder (fairseq, wav2vec2 base: conv_feature_layers
# "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"), on 1 s of 16 kHz audio: lengths 16000,
# 3199, 1599, 799, 399, 199, 99.
_W2V_LENGTHS = (16000, 3199, 1599, 799, 399, 199, 99)
# QuartzNet 5x5 (Kriman et al. 2020, Table 1): time-channel separable blocks, a depthwise conv1d of
# kernel K then a pointwise 1x1, on 64 mel features; after the stride-2 prologue 10 s of audio at
# 10 ms frames is 500 frames. (channels, kernel, repeats) of the prologue and blocks B1-B5.
_QUARTZNET = ((256, 33, 1), (256, 33, 5), (256, 39, 5), (512, 51, 5), (512, 63, 5), (512, 75, 5))


def speech1d(batch: int = 8) -> list[Conv]:
    """1-D convolutions of speech models: wav2vec 2.0's feature encoder and QuartzNet 5x5's
    depthwise (time-channel separable) blocks, each as the unit-height 2-D problem mcconv runs."""
    layers = [conv1d_layer("w2v.fe0", batch, 1, _W2V_LENGTHS[0], 512, 10, stride=5)]
    for i in range(1, 7):
        size = 3 if i < 5 else 2
        layers.append(conv1d_layer(f"w2v.fe{i}", batch, 512, _W2V_LENGTHS[i], 512, size, stride=2))
    frames, c_in = 500, 64
    c, size, _ = _QUARTZNET[0]
    layers.append(conv1d_layer("qn.prologue.dw", batch, c_in, 2 * frames, c_in, size, stride=2, padding=size // 2,
                               groups=c_in))
    layers.append(conv1d_layer("qn.prologue.pw", batch, c_in, frames, c, 1))
    for b, (width, size, repeats) in enumerate(_QUARTZNET[1:], 1):
        layers.append(conv1d_layer(f"qn.b{b}.dw", batch, c, frames, c, size, padding=size // 2, groups=c,
                                   count=repeats))
        layers.append(conv1d_layer(f"qn.b{b}.pw", batch, c, frames, width, 1, count=repeats))
        c = width
    return layers


def conv3d_layer(name, n, c, d, h, k, size, padding=1, count=1) -> Conv3dLayer:
    """A 3-D convolution: ``n`` clips of C x D x H x H, a cubic kernel ``size``, stride 1, ``padding``
    on every axis."""
    return Conv3dLayer(name, n, c, d, h, h, k, size, size, size, (1, 1, 1), (padding,) * 3, count=count)


# C3D (Tran et al., "Learning Spatiotemporal Features with 3D Convolutional Networks", ICCV 2015,
# Fig. 3): 16-frame 112x112 clips, every convolution 3x3x3, stride 1, padding 1; pool1 halves H
# and W, pools 2-4 halve D, H and W. (name, C, D, H, K) of its eight convolutions.
_C3D = (("conv1a", 3, 16, 112, 64), ("conv2a", 64, 16, 56, 128), ("conv3a", 128, 8, 28, 256),
        ("conv3b", 256, 8, 28, 256), ("conv4a", 256, 4, 14, 512), ("conv4b", 512, 4, 14, 512),
        ("conv5a", 512, 2, 7, 512), ("conv5b", 512, 2, 7, 512))


def video3d(batch: int = 4) -> list[Conv3dLayer]:
    """C3D's eight 3x3x3 convolutions on ``batch`` clips, as mcconv.conv3d calls: conv1a (3
    channels) runs as the depth im2col over the 2-D kernels, the others on the depth kernel."""
    return [conv3d_layer(f"c3d.{name}", batch, c, d, h, k, 3) for name, c, d, h, k in _C3D]


def decoder2d(batch: int = 8) -> list[ConvTranspose2dLayer]:
    """Transposed convolutions of two decoders: the DCGAN generator of pytorch/examples
    (dcgan/main.py: ngf = 64, 4x4 kernels, a 100-d code to 64x64 RGB; ``batch`` x 8 images, its
    default batch of 64) and U-Net's four 2x2 stride-2 up-convolutions (Ronneberger et al.,
    MICCAI 2015, Fig. 1: 1024 -> 512 channels at 28x28 up to 128 -> 64 at 196x196)."""
    n = batch * 8
    layers = [ConvTranspose2dLayer("dcgan.up1", n, 100, 1, 1, 512, 4, 4)]
    for i, (c, h) in enumerate(((512, 4), (256, 8), (128, 16)), 2):
        layers.append(ConvTranspose2dLayer(f"dcgan.up{i}", n, c, h, h, c // 2, 4, 4, (2, 2), (1, 1)))
    layers.append(ConvTranspose2dLayer("dcgan.up5", n, 64, 32, 32, 3, 4, 4, (2, 2), (1, 1)))
    for i, (c, h) in enumerate(((1024, 28), (512, 52), (256, 100), (128, 196)), 1):
        layers.append(ConvTranspose2dLayer(f"unet.upconv{i}", batch, c, h, h, c // 2, 2, 2, (2, 2)))
    return layers


SUITES = {"resnet50": resnet50, "mobilenetv2": mobilenetv2, "deepbench": deepbench, "seed": seed,
          "speech1d": speech1d, "video3d": video3d, "decoder2d": decoder2d}


def get_suite(name: str, batch: int | None = None) -> list[Conv]:
    """A suite's layers; ``batch`` overrides the suite's default batch size."""
    try:
        make = SUITES[name]
    except KeyError:
        raise ValueError(f"suite: expected one of {sorted(SUITES)}, got {name!r}") from None
    return make() if batch is None else make(batch)


def parse_shape(text: str):
    """An ad-hoc layer from ``N,C,H,W:K,C/g,KH,KW[:stride[:padding[:groups[:dilation]]]]``, or a
    3-D one from ``N,C,D,H,W:K,C/g,KD,KH,KW[:...]`` (stride, padding and dilation: one int each).

    Example: ``32,64,56,56:64,64,3,3:1:1``.
    """
    parts = text.split(":")
    try:
        x = tuple(int(v) for v in parts[0].split(","))
        wt = tuple(int(v) for v in parts[1].split(","))
        stride, padding, groups, dilation = (int(parts[i]) if len(parts) > i and parts[i] else d
                                             for i, d in ((2, 1), (3, 0), (4, 1), (5, 1)))
        if len(x) == len(wt) == 5:
            (n, c, d, h, w), (k, _, kd, kh, kw) = x, wt
            return Conv3dLayer("shape", n, c, d, h, w, k, kd, kh, kw, (stride,) * 3, (padding,) * 3, (dilation,) * 3,
                               groups)
        (n, c, h, w), (k, _, kh, kw) = x, wt
    except (ValueError, IndexError):
        raise ValueError(f"--shape: expected N,C,H,W:K,C/g,KH,KW[:stride[:padding[:groups[:dilation]]]] "
                         f"(or N,C,D,H,W:K,C/g,KD,KH,KW[:...] for conv3d), got {text!r}") from None
    return Conv("shape", n, c, h, w, k, kh, kw, (stride, stride), (padding, padding), (dilation, dilation), groups)
