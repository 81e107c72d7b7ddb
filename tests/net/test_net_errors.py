"""Malformed layer sections: each is a ConfigError at the offending key, with the exact text."""

from __future__ import annotations

import pytest

CONV = "[c]\nInput=sp\nType=Conv\n"  # lines 1-3

# (id, INI text, input (C, H, W), the exact message); a [<last layer>.Target] is appended to the text.
CASES = [
    ("unknown-type", "[c]\nInput=sp\nType=Convolution\nNbOutputs=4\n", (1, 8, 8),
     "test.ini:3: [c] Type: No cell generator for type 'Convolution'. (qatrun builds: Activation, BatchNorm, "
     "Conv, Deconv, Dropout, ElemWise, FMP, Fc, LRN, Normalize, Padding, Pool, Reshape, Resize, Scaling, Softmax, "
     "Transpose)"),
    ("unknown-type-close", "[c]\nInput=sp\nType=Pooling\nNbOutputs=4\n", (1, 8, 8),
     "test.ini:3: [c] Type: No cell generator for type 'Pooling'. (did you mean 'Pool'?) (qatrun builds: "
     "Activation, BatchNorm, Conv, Deconv, Dropout, ElemWise, FMP, Fc, LRN, Normalize, Padding, Pool, Reshape, Resize, "
     "Scaling, Softmax, Transpose)"),
    ("missing-type", "[c]\nInput=sp\nNbOutputs=4\n", (1, 8, 8), "test.ini:1: [c] Type: required key is missing"),
    ("unknown-input", CONV + "KernelDims=3 3\nNbOutputs=4\n[conv2]\nInput=cv\nType=Conv\nKernelDims=3 3\n"
     "NbOutputs=4\n", (1, 8, 8),
     "test.ini:7: [conv2] Input: 'cv' is neither a layer section (a section with Input=) nor the network input "
     "(sp, env, cenv) (did you mean 'c'?)"),
    ("cycle", "[a]\nInput=b\nType=Activation\nNbOutputs=1\n[b]\nInput=a\nType=Activation\nNbOutputs=1\n",
     (1, 8, 8), "test.ini:6: [b] Input: the layers form a cycle: a -> b -> a"),
    ("self-cycle", "[a]\nInput=a\nType=Activation\nNbOutputs=1\n", (1, 8, 8),
     "test.ini:2: [a] Input: the layers form a cycle: a -> a"),
    ("empty-input", "[a]\nInput=sp,\nType=Activation\nNbOutputs=1\n", (1, 8, 8),
     "test.ini:2: [a] Input: empty name in the comma-separated list"),
    ("missing-kernel", CONV + "NbOutputs=4\n", (1, 8, 8),
     "test.ini:1: [c] the kernel size is missing: give KernelDims, KernelSize, or KernelWidth and KernelHeight"),
    ("missing-kernel-height", CONV + "KernelWidth=3\nNbOutputs=4\n", (1, 8, 8),
     "test.ini:1: [c] KernelHeight: required key is missing"),
    ("missing-nboutputs", CONV + "KernelDims=3 3\n", (1, 8, 8), "test.ini:1: [c] NbOutputs: required key is missing"),
    ("nboutputs-float", CONV + "KernelDims=1 1\nNbOutputs=16.0\n", (1, 8, 8),
     'test.ini:5: [c] NbOutputs: expected an integer, found "16.0"'),
    ("nboutputs-zero", CONV + "KernelDims=1 1\nNbOutputs=0\n", (1, 8, 8),
     "test.ini:5: [c] NbOutputs: expected a positive number of outputs, found 0"),
    ("kernel-3d", CONV + "KernelDims=3 3 3\nNbOutputs=4\n", (1, 8, 8),
     "test.ini:4: [c] KernelDims: expected 2 values (width height), found 3: qatrun builds 2-D cells"),
    ("kernel-dims-and-width", CONV + "KernelDims=3 3\nKernelWidth=5\nNbOutputs=4\n", (1, 8, 8),
     "test.ini:5: [c] KernelWidth: N2D2 ignores this key because KernelDims is given; keep one of them"),
    ("stride-and-stridex", CONV + "KernelDims=3 3\nStride=2\nStrideX=1\nNbOutputs=4\n", (1, 8, 8),
     "test.ini:6: [c] StrideX: N2D2 ignores this key because Stride is given; keep one of them"),
    ("empty-output", CONV + "KernelDims=9 9\nNbOutputs=4\n", (1, 8, 8),
     "test.ini:4: [c] KernelDims: the output would be empty: input 8, kernel 9 (dilation 1), padding 0, stride 1 "
     "give an output size of 0"),
    ("stride-zero", CONV + "KernelDims=3 3\nStride=0\nNbOutputs=4\n", (1, 8, 8),
     "test.ini:5: [c] Stride: expected a value >= 1, found 0"),
    ("dilation-y-zero", CONV + "KernelDims=3 3\nDilationY=0\nNbOutputs=4\n", (1, 8, 8),
     "test.ini:5: [c] DilationY: expected a value >= 1, found 0"),
    ("nobias-in-layer", CONV + "KernelDims=3 3\nNbOutputs=4\nNoBias=1\n", (1, 8, 8),
     "test.ini:6: [c] NoBias: N2D2 reads NoBias only from a ConfigSection (it silently ignores it in the layer "
     "section): move it to the section named by ConfigSection="),
    ("nobias-inherited", "[def]\nNoBias=1\n[c] def\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=4\n", (1, 8, 8),
     "test.ini:2: [c] NoBias: N2D2 reads NoBias only from a ConfigSection (it silently ignores it in the layer "
     "section): move it to the section named by ConfigSection="),
    ("dropout-in-layer", "[d]\nInput=sp\nType=Dropout\nNbOutputs=1\nDropout=0.2\n", (1, 8, 8),
     "test.ini:5: [d] Dropout: N2D2 reads Dropout only from a ConfigSection (it silently ignores it in the layer "
     "section): move it to the section named by ConfigSection="),
    ("epsilon-in-bn-layer", "[b]\nInput=sp\nType=BatchNorm\nNbOutputs=1\nEpsilon=0.001\n", (1, 8, 8),
     "test.ini:5: [b] Epsilon: N2D2 reads Epsilon only from a ConfigSection (it silently ignores it in the layer "
     "section): move it to the section named by ConfigSection="),
    ("epsilon-in-conv-config", CONV + "KernelDims=3 3\nNbOutputs=4\nConfigSection=cfg\n[cfg]\nEpsilon=0.001\n",
     (1, 8, 8),
     "test.ini:8: [cfg] Epsilon: Unknown parameter: Epsilon (a Conv cell takes NoBias, BackPropagate, "
     "WeightsExportFormat, WeightsExportFlip, OutputsRemap)"),
    ("typo-in-config", CONV + "KernelDims=3 3\nNbOutputs=4\nConfigSection=cfg\n[cfg]\nNoBais=1\n", (1, 8, 8),
     "test.ini:8: [cfg] NoBais: Unknown parameter: NoBais (a Conv cell takes NoBias, BackPropagate, "
     "WeightsExportFormat, WeightsExportFlip, OutputsRemap) (did you mean 'NoBias'?)"),
    ("geometry-in-config", CONV + "NbOutputs=4\nConfigSection=cfg\n[cfg]\nKernelDims=3 3\n", (1, 8, 8),
     "test.ini:7: [cfg] KernelDims: Unknown parameter: KernelDims (a Conv cell takes NoBias, BackPropagate, "
     "WeightsExportFormat, WeightsExportFlip, OutputsRemap)"),
    ("param-of-pool", "[p]\nInput=sp\nType=Pool\nPoolDims=2 2\nPooling=Max\nNbOutputs=1\nConfigSection=cfg\n"
     "[cfg]\nNoBias=1\n", (1, 8, 8),
     "test.ini:9: [cfg] NoBias: Unknown parameter: NoBias (a Pool cell takes no parameters)"),
    ("configsection-missing", "[f]\nInput=sp\nType=Fc\nNbOutputs=1\nConfigSection=nothere\n", (1, 8, 8),
     "test.ini:5: [f] ConfigSection: section [nothere] does not exist"),
    ("bn-nboutputs", "[b]\nInput=sp\nType=BatchNorm\nNbOutputs=4\n", (1, 8, 8),
     "test.ini:4: [b] NbOutputs: BatchNorm keeps the number of channels: NbOutputs must equal the number of input "
     "channels (1), found 4"),
    ("bn-momentum", "[b]\nInput=sp\nType=BatchNorm\nNbOutputs=1\nConfigSection=cfg\n[cfg]\n"
     "MovingAverageMomentum=1.0\n", (1, 8, 8),
     "test.ini:7: [cfg] MovingAverageMomentum: expected a value in [0, 1), found 1.0"),
    ("pool-nboutputs", "[p]\nInput=sp\nType=Pool\nPoolDims=2 2\nPooling=Max\nNbOutputs=3\nMapping.Size=1\n",
     (1, 8, 8),
     "test.ini:6: [p] NbOutputs: qatrun pools channel-wise: NbOutputs must equal the number of input channels (1), "
     "found 3"),
    ("pool-no-pooling", "[p]\nInput=sp\nType=Pool\nPoolDims=2 2\nNbOutputs=1\nMapping.Size=1\n", (1, 8, 8),
     "test.ini:1: [p] Pooling: required key is missing"),
    ("pool-lowercase", "[p]\nInput=sp\nType=Pool\nPoolDims=2 2\nPooling=max\nNbOutputs=1\n", (1, 8, 8),
     'test.ini:5: [p] Pooling: expected one of Max, Average, found "max"'),
    ("pool-full-mapping", "[p]\nInput=sp\nType=Pool\nPoolDims=2 2\nPooling=Max\nNbOutputs=2\n", (2, 8, 8),
     "test.ini:1: [p] without Mapping keys N2D2 pools every output over all 2 channels; qatrun pools channel-wise "
     "only: write Mapping.Size=1 (or Mapping.ChannelsPerGroup=1) with NbOutputs equal to the input channels"),
    ("pool-other-mapping", "[p]\nInput=sp\nType=Pool\nPoolDims=2 2\nPooling=Max\nNbOutputs=2\nMapping.SizeY=2\n",
     (2, 8, 8),
     "test.ini:7: [p] Mapping.SizeY: this mapping is not channel-wise; qatrun pools channel-wise only: write "
     "Mapping.Size=1 (or Mapping.ChannelsPerGroup=1) with NbOutputs equal to the input channels"),
    ("pool-padding", "[p]\nInput=sp\nType=Pool\nPoolDims=2 2\nPadding=2\nPooling=Max\nNbOutputs=1\n", (1, 8, 8),
     "test.ini:5: [p] Padding: expected a padding between 0 and half the window (2 x 2)"),
    ("mapping-size", CONV + "KernelDims=1 1\nNbOutputs=3\nMapping(sp)=1 0 1 0 1\n", (1, 8, 8),
     "test.ini:6: [c] Mapping(sp): expected 1 x 3 = 3 values (rows = the 1 channels of sp, columns = the 3 "
     "outputs), found 5"),
    ("mapping-values", CONV + "KernelDims=1 1\nNbOutputs=2\nMapping(sp)=1 2\n", (1, 8, 8),
     "test.ini:6: [c] Mapping(sp): expected only 0 and 1 in the mapping matrix"),
    ("mapping-parent", CONV + "KernelDims=1 1\nNbOutputs=2\nMapping(pool1)=1 1\n", (1, 8, 8),
     "test.ini:6: [c] Mapping(pool1): pool1 is not an input of this cell (Input: sp)"),
    ("mapping-matrix-and-size", CONV + "KernelDims=1 1\nNbOutputs=2\nMapping(sp)=1 1\nMapping.Size=1\n", (1, 8, 8),
     "test.ini:7: [c] Mapping.Size: N2D2 ignores this key because Mapping(sp) is given; keep one of them"),
    ("canvas-size-zero", CONV + "KernelDims=1 1\nNbOutputs=2\nMapping.SizeX=0\n", (2, 8, 8),
     "test.ini:6: [c] Mapping.SizeX: expected a value >= 1, found 0"),
    ("canvas-per-input-offset", CONV + "KernelDims=1 1\nNbOutputs=2\nMapping(sp).OffsetY=-1\n", (2, 8, 8),
     "test.ini:6: [c] Mapping(sp).OffsetY: expected a value >= 0, found -1"),
    ("groups-indivisible", CONV + "KernelDims=1 1\nNbOutputs=4\nMapping.NbGroups=3\n", (1, 8, 8),
     "test.ini:6: [c] Mapping.NbGroups: 1 input channels cannot be split in 3 groups"),
    ("groups-outputs", CONV + "KernelDims=1 1\nNbOutputs=3\nMapping.NbGroups=2\n", (2, 8, 8),
     "test.ini:6: [c] Mapping.NbGroups: 3 outputs (NbOutputs) cannot be split in 2 groups"),
    ("groups-exclusive", CONV + "KernelDims=1 1\nNbOutputs=4\nMapping.NbGroups=2\nMapping.ChannelsPerGroup=1\n",
     (1, 8, 8),
     "test.ini:7: [c] Mapping.ChannelsPerGroup: Mapping.NbGroups and Mapping.ChannelsPerGroup are mutually "
     "exclusive"),
    ("activation-unknown", CONV + "KernelDims=1 1\nNbOutputs=1\nActivationFunction=ReLU\n", (1, 8, 8),
     'test.ini:6: [c] ActivationFunction: expected one of Linear, Rectifier, Logistic, LogisticWithLoss, '
     'Saturation, Softplus, Swish, Tanh, TanhLeCun, found "ReLU"'),
    ("activation-param", CONV + "KernelDims=1 1\nNbOutputs=1\nActivationFunction=Tanh\n"
     "ActivationFunction.LeakSlope=0.1\n", (1, 8, 8),
     "test.ini:7: [c] ActivationFunction.LeakSlope: Unknown parameter: ActivationFunction.LeakSlope "
     "(Tanh takes Alpha)"),
    ("activation-param-none", CONV + "KernelDims=1 1\nNbOutputs=1\nActivationFunction=Swish\n"
     "ActivationFunction.Alpha=2\n", (1, 8, 8),
     "test.ini:7: [c] ActivationFunction.Alpha: Unknown parameter: ActivationFunction.Alpha "
     "(Swish takes no parameter)"),
    ("activation-param-alone", CONV + "KernelDims=1 1\nNbOutputs=1\nActivationFunction.Alpha=2\n", (1, 8, 8),
     "test.ini:6: [c] ActivationFunction.Alpha: ActivationFunction.Alpha is given but the section has no "
     "ActivationFunction="),
    ("activation-on-dropout", "[d]\nInput=sp\nType=Dropout\nNbOutputs=1\nActivationFunction=Rectifier\n",
     (1, 8, 8),
     "test.ini:5: [d] ActivationFunction: a Dropout cell has no activation function (N2D2 ignores this key)"),
    ("filler-param", CONV + "KernelDims=1 1\nNbOutputs=1\nWeightsFiller=XavierFiller\nWeightsFiller.StdDev=0.1\n",
     (1, 8, 8),
     "test.ini:7: [c] WeightsFiller.StdDev: XavierFiller has no parameter StdDev (its parameters: VarianceNorm, "
     "Distribution, Scaling)"),
    ("filler-no-name", CONV + "KernelDims=1 1\nNbOutputs=1\nWeightsFiller.StdDev=0.1\n", (1, 8, 8),
     "test.ini:6: [c] WeightsFiller.StdDev: WeightsFiller.StdDev needs WeightsFiller=<filler> in the section: "
     "the default filler, NormalFiller(0, 0.05), takes no parameters"),
    ("filler-constant-value", CONV + "KernelDims=1 1\nNbOutputs=1\nBiasFiller=ConstantFiller\n", (1, 8, 8),
     "test.ini:1: [c] BiasFiller.Value: required key is missing"),
    ("filler-variance-norm", CONV + "KernelDims=1 1\nNbOutputs=1\nWeightsFiller=HeFiller\n"
     "WeightsFiller.VarianceNorm=fanin\n", (1, 8, 8),
     'test.ini:7: [c] WeightsFiller.VarianceNorm: expected one of FanIn, Average, FanOut, found "fanin"'),
    ("elemwise-shapes", CONV + "KernelDims=3 3\nNbOutputs=1\n[e]\nInput=c,sp\nType=ElemWise\nOperation=Sum\n"
     "NbOutputs=1\n", (1, 8, 8),
     "test.ini:7: [e] Input: the inputs must have one shape, found c 1x6x6, sp 1x8x8"),
    ("elemwise-weights", CONV + "KernelDims=1 1\nNbOutputs=1\n[e]\nInput=c,sp\nType=ElemWise\nOperation=Sum\n"
     "NbOutputs=1\nWeights=1 2 3\n", (1, 8, 8),
     "test.ini:11: [e] Weights: CoeffMode=PerInput expects 1 or 2 (one per input) values, found 3"),
    ("elemwise-prod-weights", CONV + "KernelDims=1 1\nNbOutputs=1\n[e]\nInput=c,sp\nType=ElemWise\n"
     "Operation=Prod\nNbOutputs=1\nWeights=2\n", (1, 8, 8), "test.ini:11: [e] Weights: Prod does not use Weights"),
    ("elemwise-operation", "[e]\nInput=sp,sp\nType=ElemWise\nNbOutputs=1\n", (1, 8, 8),
     "test.ini:1: [e] Operation: required key is missing"),
    ("concat-sizes", CONV + "KernelDims=3 3\nNbOutputs=1\n[d]\nInput=c,sp\nType=Conv\nKernelDims=1 1\n"
     "NbOutputs=1\n", (1, 8, 8),
     "test.ini:7: [d] Input: the inputs must have one width and height, found c 1x6x6, sp 1x8x8"),
    ("softmax-two-inputs", "[s]\nInput=sp,sp\nType=Softmax\nNbOutputs=1\n", (1, 8, 8),
     "test.ini:2: [s] Input: a Softmax cell takes one input, found 2"),
    ("softmax-groups", "[s]\nInput=sp\nType=Softmax\nNbOutputs=4\nGroupSize=3\n", (4, 1, 1),
     "test.ini:5: [s] GroupSize: expected 0 or a divisor of the 4 channels, found 3"),
    ("datatype", CONV + "KernelDims=1 1\nNbOutputs=1\nDataType=Float64\n", (1, 8, 8),
     "test.ini:6: [c] DataType: qatrun computes in Float32 only"),
    ("module-name-collision", "[a.b]\nInput=sp\nType=Activation\nNbOutputs=1\n[a_b]\nInput=a.b\n"
     "Type=Activation\nNbOutputs=1\n", (1, 8, 8),
     "test.ini:5: [a_b] module name 'a_b' is already taken by [a.b]: section names must stay distinct once every "
     "character outside A-Z a-z 0-9 _ becomes _"),
    ("activation-name-collision", "[a]\nInput=sp\nType=Activation\nNbOutputs=1\n[a_act]\nInput=a\nType=Scaling\n"
     "Factor=1\nNbOutputs=1\n", (1, 8, 8),
     "test.ini:5: [a_act] module name 'a_act' is already taken by [a]: section names must stay distinct once "
     "every character outside A-Z a-z 0-9 _ becomes _"),
    ("reserved-name", "[forward]\nInput=sp\nType=Activation\nNbOutputs=1\n", (1, 8, 8),
     "test.ini:1: [forward] the section name gives the module name 'forward', which torch reserves"),
    ("weights-sharing", CONV + "KernelDims=1 1\nNbOutputs=1\nWeightsSharing=d\n", (1, 8, 8),
     "test.ini:6: [c] WeightsSharing: sharing parameters between cells is not supported by qatrun"),
    ("deconv-mapping", "[d]\nInput=sp\nType=Deconv\nKernelDims=1 1\nNbOutputs=2\nMapping(sp)=1 0 1 1\n", (2, 8, 8),
     "test.ini:1: [d] Deconv supports full or grouped mappings only (Mapping.NbGroups)"),
    ("padding-empty", "[p]\nInput=sp\nType=Padding\nNbOutputs=1\nTopPadding=-4\nBottomPadding=-4\n"
     "LeftPadding=0\nRightPadding=0\n", (1, 8, 8), "test.ini:5: [p] TopPadding: the output would be empty (8 x 0)"),
    ("reshape-size", "[r]\nInput=sp\nType=Reshape\nNbOutputs=1\nDims=5 5\n", (1, 8, 8),
     "test.ini:5: [r] Dims: 5 x 5 x 1 does not hold the 1 x 8 x 8 input values"),
    ("transpose-batch", "[t]\nInput=sp\nType=Transpose\nNbOutputs=1\nPerm=3 1 2 0\n", (1, 8, 8),
     "test.ini:5: [t] Perm: expected a permutation of 0 1 2 keeping 3 (the batch) last, found 3 1 2 0"),
    ("fc-window", "[f]\nInput=sp\nType=Fc\nNbOutputs=1\nInputOffsetX=2\n", (1, 8, 8),
     "test.ini:5: [f] InputOffsetX: only 0 (the whole input) is supported by qatrun"),
    ("fc-dropconnect", "[f]\nInput=sp\nType=Fc\nNbOutputs=1\nConfigSection=cfg\n[cfg]\nDropConnect=0.5\n",
     (1, 8, 8), "test.ini:7: [cfg] DropConnect: DropConnect is not supported by qatrun (keep 1.0)"),
    ("dropout-probability", "[d]\nInput=sp\nType=Dropout\nNbOutputs=1\nConfigSection=cfg\n[cfg]\nDropout=1\n",
     (1, 8, 8), "test.ini:7: [cfg] Dropout: expected a probability in [0, 1), found 1.0"),
]


@pytest.mark.parametrize("text, shape, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_malformed_layer_section(build_error, text, shape, message) -> None:
    assert build_error(text, shape) == message


# Errors about the graph as a whole (no target appended).
GRAPH_CASES = [
    ("no-target", "[a]\nInput=sp\nType=Activation\nNbOutputs=1\n",
     "test.ini:1: [a] Missing target cell (no [*.Target] section found): the network output [a] needs a "
     "[a.Target] section"),
    ("target-of-no-layer", "[softmax]\nInput=sp\nType=Softmax\nNbOutputs=1\n[softmax.Target]\n[sofmax.Target-Top5]\n",
     "test.ini:6: [sofmax.Target-Top5] target section of 'sofmax', which is not a layer section (did you mean "
     "'softmax'?)"),
    ("target-topn", "[a]\nInput=sp\nType=Activation\nNbOutputs=1\n[a.Target]\nTopN=0\n",
     "test.ini:6: [a.Target] TopN: expected a positive value, found 0"),
    ("target-type", "[a]\nInput=sp\nType=Activation\nNbOutputs=1\n[a.Target]\nType=TargetROIs\n",
     "test.ini:6: [a.Target] Type: TargetROIs is the target of N2D2's object detection (bounding boxes); qatrun "
     "trains rate-based classifiers"),
    ("insert-batchnorm", "InsertBatchNormAfterConv=1\n[a]\nInput=sp\nType=Activation\nNbOutputs=1\n[a.Target]\n",
     "test.ini:1: InsertBatchNormAfterConv: not supported by qatrun: write the BatchNorm layers"),
    ("default-data-type", "DefaultDataType=Float16\n[a]\nInput=sp\nType=Activation\nNbOutputs=1\n[a.Target]\n",
     "test.ini:1: DefaultDataType: qatrun computes in Float32 only"),
]


@pytest.mark.parametrize("text, message", [case[1:] for case in GRAPH_CASES], ids=[case[0] for case in GRAPH_CASES])
def test_malformed_graph(build_error, text, message) -> None:
    assert build_error(text, (1, 8, 8), target=False) == message


def test_at_least_twenty_malformed_sections() -> None:
    assert len(CASES) + len(GRAPH_CASES) >= 20
