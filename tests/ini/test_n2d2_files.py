"""INI files written as N2D2 ships them: built without their data, or refused for a reason to act on.

Each category of issue 16: an ImageNet network whose solver schedules refer to ``[sp]_EpochSize``,
summarized with ImageNet absent; a network without ``[database]`` (or one without ``Type``) built,
summarized, fused and exported from given weights; the spiking and detection constructs qatrun refuses,
each with its one-line message and the line it names; an unset environment variable in a path.
Every error goes through ``qatrun.cli.main``: exit status 2, one line, no traceback.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import qatrun
from qatrun import cli
from qatrun.errors import DataError, QatrunError

RATE = "qatrun trains rate-based classifiers"

IMAGENET = """\
; MobileNet-style network on ImageNet (N2D2's models/MobileNet_v1.ini, shrunk)
DefaultModel=Frame_CUDA
$BATCH_SIZE=32
$EPOCHS=120

[database]
Type=ILSVRC2012_Database
DataPath={data}
Learn=1.0

[sp]
SizeX=32
SizeY=32
NbChannels=3
BatchSize=${{BATCH_SIZE}}

[sp.Transformation-1]
Type=RescaleTransformation
Width=36
Height=36
KeepAspectRatio=1
ResizeToFit=0

[sp.Transformation-2]
Type=PadCropTransformation
Width=[sp]SizeX
Height=[sp]SizeY

[sp.Transformation-3]
Type=RangeAffineTransformation
FirstOperator=Minus
FirstValue=103.53 116.28 123.675
SecondOperator=Divides
SecondValue=57.375 57.12 58.395

[common.config]
NoBias=1
Solvers.LearningRate=0.1
Solvers.Momentum=0.9
Solvers.LearningRatePolicy=StepDecay
Solvers.LearningRateStepSize=$([sp]_EpochSize * 30)
Solvers.LearningRateDecay=0.1

[conv1]
Input=sp
Type=Conv
KernelDims=3 3
Stride=2
Padding=1
NbOutputs=8
ActivationFunction=Rectifier
ConfigSection=common.config

[conv2_dw]
Input=conv1
Type=Conv
KernelDims=3 3
Padding=1
NbOutputs=8
Mapping.ChannelsPerGroup=1
ActivationFunction=Rectifier
ConfigSection=common.config

[pool]
Input=conv2_dw
Type=Pool
PoolDims=[conv2_dw]_OutputsWidth [conv2_dw]_OutputsHeight
NbOutputs=[conv2_dw]NbOutputs
Pooling=Average
Mapping.ChannelsPerGroup=1

[fc]
Input=pool
Type=Fc
NbOutputs=1000
ActivationFunction=Linear
ConfigSection=common.config

[softmax]
Input=fc
Type=Softmax
NbOutputs=[fc]NbOutputs
WithLoss=1

[softmax.Target]
"""

# A SAT W4A4 network in the style of N2D2's LeNet-bn-SAT test files; {database} is replaced per test.
QAT = """\
DefaultModel=Frame
$EPOCHS=10
{database}
[sp]
SizeX=12
SizeY=12
BatchSize=16

[common.config]
NoBias=1
Solvers.LearningRate=0.1
Solvers.LearningRatePolicy=CosineDecay
Solvers.MaxIterations=$([sp]_EpochSize * ${{EPOCHS}})

[conv1]
Input=sp
Type=Conv
KernelDims=3 3
NbOutputs=4
ActivationFunction=Linear
QWeight=SAT
QWeight.Range=15
ConfigSection=common.config

[bn1]
Input=conv1
Type=BatchNorm
NbOutputs=[conv1]NbOutputs
ActivationFunction=Linear
QAct=SAT
QAct.Alpha=6.0
QAct.Range=15
QActSolver=SGD
QActSolver.LearningRate=0.1

[fc]
Input=bn1
Type=Fc
NbOutputs=10
ActivationFunction=Linear
QWeight=SAT
QWeight.Range=255
QWeight.ApplyScaling=1
QAct=SAT
QAct.Alpha=6.0
QAct.Range=255
ConfigSection=common.config

[softmax]
Input=fc
Type=Softmax
NbOutputs=[fc]NbOutputs
WithLoss=1

[softmax.Target]
"""


def write(folder: Path, text: str, name: str = "net.ini") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Runs the command; asserts exit status 2, one line on stderr, no traceback; returns the message."""
    capsys.readouterr()
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.split(": ", 2)[1:2] == ["warning"]]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0].removeprefix("error: ")


# ------------------------------------------------------------------------------------------ ImageNet absent


def test_imagenet_summary_without_imagenet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = write(tmp_path, IMAGENET.format(data=tmp_path / "ILSVRC2012"))
    assert cli.main([str(ini)]) == 0
    out = capsys.readouterr().out
    assert "fc Fc pool 1000x1x1 8,000 8,000 - Linear" in " ".join(out.split())
    assert "Values that depend on the data set (computed when the data are opened):" in out
    assert f"{ini}:41: [common.config] Solvers.LearningRateStepSize refers to [sp]_EpochSize" in out
    assert "the data set is absent here: " in out and "ILSVRC2012_Database: data set not found" in out


def test_imagenet_learning_without_imagenet_is_the_data_error(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    ini = write(tmp_path, IMAGENET.format(data=tmp_path / "ILSVRC2012"))
    message = cli_error(capsys, str(ini), "-learn-epoch", "1")
    assert message.startswith(f"{ini}:6: [database] ILSVRC2012_Database: data set not found: looked for train/, val/")


def test_a_network_loaded_without_its_data_does_not_learn_with_the_placeholder(tmp_path: Path) -> None:
    ini = write(tmp_path, IMAGENET.format(data=tmp_path / "ILSVRC2012"))
    network = qatrun.load(ini)
    with pytest.raises(DataError) as info:
        network.learn(None, epochs=1)  # type: ignore[arg-type]  # refused before the data are looked at
    assert str(info.value) == (
        f"{ini}:41: [common.config] Solvers.LearningRateStepSize: Solvers.LearningRateStepSize refers to "
        "[sp]_EpochSize, unknown when the network was loaded (the data set was absent): load the INI again now "
        "that the data are there"
    )


def test_with_the_data_present_nothing_is_provisional() -> None:
    network = qatrun.load("models/LeNet.ini")  # the MNIST that ships with qatrun
    assert "depend on the data set" not in network.summary()


def test_learning_writes_the_stimuli_data_files_n2d2_writes(tmp_path: Path) -> None:
    from tests.data.helpers import mnist_folder

    mnist_folder(tmp_path / "mnist", 20, 4, gz=False)
    ini = write(tmp_path, f"""\
        [database]
        Type=MNIST_IDX_Database
        DataPath={tmp_path / "mnist"}
        [sp]
        SizeX=28
        SizeY=28
        BatchSize=10
        [sp.StimuliData-mean]
        MeanData=1
        LogSizeRange=1
        [sp.Transformation-1]
        Type=AffineTransformation
        FirstOperator=Minus
        FirstValue=sp.StimuliData-mean/meanData.bin
        [fc]
        Input=sp
        Type=Fc
        NbOutputs=10
        [fc.Target]
        """)
    network = qatrun.load(ini)
    data = network.open_data()
    network.learn(data, epochs=1, out_dir=tmp_path / "run", say=lambda line: None)
    out = tmp_path / "run" / "sp.StimuliData-mean"
    assert sorted(p.name for p in out.iterdir()) == ["meanData.bin", "sizeRange.dat"]
    assert (out / "sizeRange.dat").read_text() == "28 28 1 20\n"


# ------------------------------------------------------------------------------------------ no [database]


@pytest.mark.parametrize(
    ("database", "reason", "line"),
    [
        ("", "the INI has no [database] section (N2D2: no database specified); learning and testing need one: "
         "add a [database] section with a Type", None),
        ("[database]\nLabelPath=labels.dat\n", "[database] has no Type (N2D2's empty database); learning and "
         "testing need one: give [database] a Type", 3),
    ],
    ids=["no-database", "no-type"],
)
def test_network_without_a_database_builds_fuses_and_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], database: str, reason: str, line: int | None
) -> None:
    ini = write(tmp_path, QAT.format(database=database))
    (tmp_path / "labels.dat").write_text("".join(f"class{k}\n" for k in range(10)))
    network = qatrun.load(ini, seed=3)
    summary = network.summary()
    assert "conv1 Conv sp 4x10x10 36 3,600 SAT w4 Linear" in " ".join(summary.split())
    assert "[common.config] Solvers.MaxIterations refers to [sp]_EpochSize" in summary
    if not database:
        assert "warning: no database specified" in capsys.readouterr().err
    # Given weights (a folder N2D2's format), the network fuses to integers and exports, no data read.
    network.save_weights(tmp_path / "weights")
    given = qatrun.load(ini, seed=4)
    given.load_weights(tmp_path / "weights")
    integer = given.fuse()
    integer.save(tmp_path / "weights_quantized")
    assert (tmp_path / "weights_quantized" / "conv1_weights.syntxt").is_file()
    x = torch.randint(0, 256, (8, 1, 12, 12)).float() / 255
    assert integer.verify([x]).ok
    assert integer.export(tmp_path / "net-int.onnx", x).ok
    # What needs data says what is missing.
    where = f"{ini}:{line}: [database]" if line else f"{ini}:"
    with pytest.raises(DataError) as info:
        given.open_data()
    assert str(info.value).startswith(f"{where} no data set: {reason} (MNIST_IDX_Database, ")
    assert cli_error(capsys, str(ini), "-test").startswith(f"{where} no data set: {reason}")


def test_the_command_fuses_and_exports_a_network_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """-qat-fuse and -export of given weights: verified and checked on random pixel images, which it says."""
    ini = write(tmp_path, QAT.format(database=""))
    trained = qatrun.load(ini, seed=3)
    trained.gm.train()
    with torch.no_grad():  # the activation quantizers' first batch (SAT alphas stay as the INI gives them)
        trained.gm(trained.pixel_images(16))
    trained.save_weights(tmp_path / "weights")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main([str(ini), "-qat-fuse", "-w", "weights", "-export", "onnx-int"]) == 0
    out = capsys.readouterr().out
    assert "Notice: no data set (the INI has no [database] section" in out and "256 random pixel images" in out
    assert "0 of 256 predictions differ" in out and "verified" in out
    assert (tmp_path / "weights_quantized").is_dir() and (tmp_path / "net-int.onnx").is_file()
    assert "no data set" in cli_error(capsys, str(ini), "-qat-fuse") and "-w FOLDER" in cli_error(
        capsys, str(ini), "-export", "onnx")


# ------------------------------------------------------------------------------------------ out of scope

MNIST_SP = "[database]\nType=MNIST_IDX_Database\n[sp]\nSizeX=28\nSizeY=28\n"
CONV = "[conv1]\nInput=sp\nType=Conv\nKernelDims=5 5\nNbOutputs=4\n"

REFUSED = [
    # (id, INI text, line, "[section] Key: message" expected after "path:line: ")
    ("spiking-threshold", MNIST_SP + CONV + "ConfigSection=conv1.config\n[conv1.config]\nThreshold=1.0\n"
     "[conv1.Target]\n", 13,
     "[conv1.config] Threshold: Threshold is a parameter of N2D2's spiking neurons (Spike models, STDP learning); "
     + RATE),
    ("spiking-threshold-in-section", MNIST_SP + CONV + "BipolarThreshold=1\n[conv1.Target]\n", 11,
     "[conv1] BipolarThreshold: BipolarThreshold is a parameter of N2D2's spiking neurons (Spike models, STDP "
     "learning); " + RATE),
    ("stdp", MNIST_SP + CONV + "ConfigSection=stdp\n[stdp]\nStdpLtp=1\n[conv1.Target]\n", 13,
     "[stdp] StdpLtp: StdpLtp is a parameter of N2D2's spiking neurons (Spike models, STDP learning); " + RATE),
    ("spike-default-model", "DefaultModel=Spike\n" + MNIST_SP + CONV + "[conv1.Target]\n", 1,
     "DefaultModel: Spike is N2D2's spiking simulation; " + RATE + " (DefaultModel=Frame or Frame_CUDA)"),
    ("spike-model", MNIST_SP + CONV + "Model=Spike_RRAM\n[conv1.Target]\n", 11,
     "[conv1] Model: Spike_RRAM is N2D2's spiking simulation; " + RATE),
    ("n-mnist", "[database]\nType=N_MNIST_Database\n[sp]\nSizeX=34\nSizeY=34\n", 2,
     "[database] Type: N_MNIST_Database holds event-based (spiking) data; " + RATE),
    ("cenv", "[database]\nType=MNIST_IDX_Database\n[cenv]\nSizeX=28\nSizeY=28\n", 3,
     "[cenv] [cenv] drives N2D2's spiking simulator; " + RATE + " (their stimuli provider is [sp] or [env])"),
    ("anchor", MNIST_SP + CONV + "[anchors]\nInput=conv1\nType=Anchor\nNbOutputs=4\n[anchors.Target]\n", 13,
     "[anchors] Type: Anchor is the anchors of N2D2's object detection (Faster R-CNN); " + RATE),
    ("roipooling", MNIST_SP + CONV + "[roi]\nInput=conv1\nType=ROIPooling\nNbOutputs=4\n[roi.Target]\n", 13,
     "[roi] Type: ROIPooling is the region-of-interest pooling of N2D2's object detection (Faster R-CNN); " + RATE),
    ("proposal", MNIST_SP + CONV + "[prop]\nInput=conv1\nType=Proposal\nNbOutputs=4\n[prop.Target]\n", 13,
     "[prop] Type: Proposal is the region proposals of N2D2's object detection (Faster R-CNN); " + RATE),
    ("rp", MNIST_SP + CONV + "[rpn]\nInput=conv1\nType=RP\nNbOutputs=4\n[rpn.Target]\n", 13,
     "[rpn] Type: RP is the region proposal network of N2D2's object detection (Faster R-CNN); " + RATE),
    ("lstm", MNIST_SP + CONV + "[rnn]\nInput=conv1\nType=LSTM\nNbOutputs=4\n[rnn.Target]\n", 13,
     "[rnn] Type: LSTM is a recurrent layer (N2D2's LSTM, for sequences); " + RATE),
    ("unpool", MNIST_SP + CONV + "[up]\nInput=conv1\nType=Unpool\nNbOutputs=4\n[up.Target]\n", 13,
     "[up] Type: Unpool is the max-unpooling of N2D2's encoder-decoder (segmentation) networks; " + RATE),
    ("distance", MNIST_SP + CONV + "[d]\nInput=conv1\nType=Distance\nNbOutputs=4\n[d.Target]\n", 13,
     "[d] Type: Distance is a distance-to-centroids layer (N2D2's Distance cell, for metric learning); " + RATE),
    ("target-rois", MNIST_SP + CONV + "[conv1.Target]\nType=TargetROIs\n", 12,
     "[conv1.Target] Type: TargetROIs is the target of N2D2's object detection (bounding boxes); " + RATE),
    ("target-rp", MNIST_SP + CONV + "[conv1.Target]\nType=TargetRP\n", 12,
     "[conv1.Target] Type: TargetRP is the target of N2D2's region proposal network (object detection); " + RATE),
    ("imdb-wiki", "[database]\nType=IMDBWIKI_Database\n[sp]\nSizeX=28\nSizeY=28\n", 2,
     "[database] Type: IMDBWIKI_Database holds face detection and age/gender regression data; " + RATE),
    ("kitti", "[database]\nType=KITTI_Object_Database\n[sp]\nSizeX=28\nSizeY=28\n", 2,
     "[database] Type: KITTI_Object_Database holds object detection data; " + RATE),
    ("kitti-road", "[database]\nType=KITTI_Road_Database\n[sp]\nSizeX=28\nSizeY=28\n", 2,
     "[database] Type: KITTI_Road_Database holds road segmentation data; " + RATE),
    ("threshold-cell", MNIST_SP + CONV + "[t]\nInput=conv1\nType=Threshold\nNbOutputs=4\n[t.Target]\n", 13,
     "[t] Type: Threshold is the thresholding of N2D2's segmentation outputs into binary maps (it has no "
     "gradient); " + RATE),
]

# N2D2 constructs qatrun does not take, each refused with what to write instead.
CONVERT = [
    ("ckp", "[database]\nType=CKP_Database\n[sp]\nSizeX=28\nSizeY=28\n", 2,
     "[database] Type: qatrun does not read CKP_Database (the Cohn-Kanade (CK+) facial expression sequences) in "
     "its own layout: put each labelled image in a sub-folder named after its expression and read the folder "
     "with Type=DIR_Database"),
    ("litis-rouen", "[database]\nType=LITISRouen_Database\n[sp]\nSizeX=28\nSizeY=28\n", 2,
     "[database] Type: qatrun does not read LITISRouen_Database (the LITIS Rouen audio scene spectrograms) in "
     "its own layout: save each spectrogram as an image in a sub-folder named after its scene and read the "
     "folder with Type=DIR_Database"),
    ("actitracker", "[database]\nType=Actitracker_Database\n[sp]\nSizeX=28\nSizeY=28\n", 2,
     "[database] Type: qatrun does not read Actitracker_Database (the Actitracker accelerometer recordings) in "
     "its own layout: write each window of samples as one line of a CSV file, its activity last, and read it "
     "with Type=CSV_Database"),
    ("transformation-cell", MNIST_SP + "[dft]\nInput=sp\nType=Transformation\nNbOutputs=1\n"
     "Transformation=DFTTransformation\n[dft.Target]\n", 8,
     "[dft] Type: qatrun does not build a Transformation cell, a stimuli transformation run inside the network: "
     "qatrun applies transformations to the stimuli only; move it to a [sp.Transformation-N] section (its "
     "Transformation= value as Type=, with the same keys)"),
    ("wallis", MNIST_SP + "[sp.Transformation-1]\nType=WallisFilterTransformation\nSize=5\n" + CONV
     + "[conv1.Target]\n", 7,
     "[sp.Transformation-1] Type: WallisFilterTransformation is an N2D2 transformation qatrun does not implement: "
     "apply it to the images beforehand (and read them with DIR_Database), or remove this section"),
]


@pytest.mark.parametrize(("text", "line", "message"), [pytest.param(*c[1:], id=c[0]) for c in REFUSED + CONVERT])
def test_constructs_qatrun_does_not_take_are_refused_with_the_reason(tmp_path: Path, text: str, line: int,
                                                                    message: str) -> None:
    ini = write(tmp_path, text)
    with pytest.raises(QatrunError) as info:
        qatrun.load(ini)
    assert str(info.value) == f"{ini}:{line}: {message}"


def test_out_of_scope_refusal_through_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = write(tmp_path, MNIST_SP + CONV + "ConfigSection=c\n[c]\nTerminateDelta=4\n[conv1.Target]\n")
    assert cli_error(capsys, str(ini)) == (
        f"{ini}:13: [c] TerminateDelta: TerminateDelta is a parameter of N2D2's spiking neurons (Spike models, "
        "STDP learning); " + RATE
    )


@pytest.mark.parametrize(("option", "what"), [("-learn-stdp", "N2D2's STDP learning of spiking networks"),
                                              ("-present-time", "a setting of N2D2's spiking simulation")])
def test_n2d2s_spiking_options_are_refused_with_the_reason(capsys: pytest.CaptureFixture[str], option: str,
                                                           what: str) -> None:
    assert cli_error(capsys, "models/LeNet.ini", option, "10") == f"{option} is {what}; {RATE}"


# ------------------------------------------------------------------------------------------ environment


def test_unset_environment_variable_in_an_onnx_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("N2D2_MODELS", raising=False)
    ini = write(tmp_path, MNIST_SP + "[onnx]\nInput=sp\nType=ONNX\nFile=${N2D2_MODELS}/ONNX/resnet18v1.onnx\n")
    assert cli_error(capsys, str(ini)) == (
        f'{ini}:9: [onnx] File: ${{N2D2_MODELS}} is not set in the environment (the path would read '
        '"/ONNX/resnet18v1.onnx"): set it, or write the path in full'
    )


def test_unset_environment_variable_in_a_data_path_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QATRUN_TEST_DATA_ROOT", raising=False)
    ini = write(tmp_path, "[database]\nType=CIFAR10_Database\nDataPath=${QATRUN_TEST_DATA_ROOT}/cifar-10\n"
                "[sp]\nSizeX=32\nSizeY=32\nNbChannels=3\n[fc]\nInput=sp\nType=Fc\nNbOutputs=10\n[fc.Target]\n")
    unset = (f'{ini}:3: [database] DataPath: ${{QATRUN_TEST_DATA_ROOT}} is not set in the environment (the path '
             'would read "/cifar-10"): set it, or write the path in full')
    summary = qatrun.load(ini).summary()  # the data are not needed: no error, and nothing refers to them
    assert "Total parameters: 30,730" in summary
    assert cli_error(capsys, str(ini), "-test") == unset


def test_unset_environment_variable_in_a_template_name_names_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("N2D2_MODELS", raising=False)
    ini = write(tmp_path, MNIST_SP + "[block@${N2D2_MODELS}/ResNet-block.ini.tpl]\nINPUT=sp\n")
    with pytest.raises(QatrunError) as info:
        qatrun.load(ini)
    assert str(info.value) == (
        f"{ini}:6: [block@${{N2D2_MODELS}}/ResNet-block.ini.tpl] template ${{N2D2_MODELS}}/ResNet-block.ini.tpl: "
        '${N2D2_MODELS} is not set in the environment (the path would read "/ResNet-block.ini.tpl"): set it, or '
        "write the path in full"
    )
