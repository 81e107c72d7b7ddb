"""ONNX import (``Type=ONNX`` sections) and N2D2's override sections: reference/n2d2.md section 1.9.

Design note.

An ``[onnx]`` section (any name) with ``Type=ONNX`` and ``File=model.onnx`` becomes part of the one
``torch.fx.GraphModule`` that the hand-made builder writes, in the same form: every ONNX node N2D2 turns
into a cell becomes a :class:`~qatrun.net.builder.Cell` named after the node's *first output* (N2D2's cell
name), its module a top-level submodule ``module_name(<output>)``:

    ONNX op                                   cell type   module
    Conv                                      Conv        nn.Conv2d (an asymmetric pad: a ``<output>_padding``
                                                          Padding cell before it, as N2D2 inserts)
    ConvTranspose                             Deconv      nn.ConvTranspose2d
    Gemm, MatMul (constant 2-D weights)       Fc          nn.Linear after ``torch.flatten(x, 1)``; a MatMul's
                                                          following Add of a constant vector is its bias
    BatchNormalization                        BatchNorm   nn.BatchNorm2d
    MaxPool, AveragePool, GlobalAverage/      Pool        nn.MaxPool2d / nn.AvgPool2d (global: a window of
    GlobalMaxPool, ReduceMean/Max over H, W               the whole input, as N2D2's PoolDims)
    Dropout                                   Dropout     nn.Dropout
    LRN                                       LRN         onnx2torch's module
    Add, Sum, Sub, Mul, Max of tensors        ElemWise    layers.ElemWise
    Softmax over channels                     Softmax     layers.Softmax
    Relu, LeakyRelu, Sigmoid, Tanh            -           ``<cell>_act`` of the cell before it (below)

Every other node (Flatten, Reshape, Concat, Constant...) is *glue*: onnx2torch's module, kept in a
container submodule named after the ONNX section (``gm.onnx.<node>``), so it cannot collide with a cell.
Identity nodes and the outputs listed in ``Ignore=`` are skipped: their output is their first input.

Overrides, exactly as N2D2 resolves them (``DeepNetGenerator::ONNX_processGraph``): a cell's settings
come from the section named after its first output, else from ``[<onnx>:<Kind>_def]`` for Kind in Conv,
Fc, BatchNorm, Pool, Dropout, LRN; the chosen section is read like a hand-made layer's (ConfigSection
cell parameters, fillers, and later ``QWeight*`` and solvers by their packages). Geometry always comes
from the graph: a geometry key there (``KernelDims``, ``NbOutputs``...) is an error, where N2D2 ignores
it. A Relu is no cell: it becomes the activation of the cell whose output it reads, and a section named
after the Relu's output replaces that activation (its ``ActivationFunction``) and holds its ``QAct*`` keys;
there is no default section for activations. A Relu that cannot be merged (its input feeds other nodes
too, or comes from no cell) becomes an Activation cell named after its output.

Where the section holding a cell's activation settings is not the cell's own section, it is recorded as
``Cell.act_section``: the quant package reads ``QWeight*`` from ``cell.section`` and ``QAct*`` from
``cell.act_section or cell.section``.

Where qatrun differs from N2D2, and why:

* ``ONNX_init=0`` refills Conv, Deconv and Fc weights and biases with the section's fillers (N2D2's
  default N(0, 0.05) without one) and resets BatchNorm to scale 1, shift 0, mean 0, variance 0, as a
  hand-made BatchNorm starts. With ``ONNX_init=1`` fillers have no effect: qatrun says so once per section.
* BatchNorm momentum: N2D2 copies the ONNX attribute (0.9 by default) into ``MovingAverageMomentum``,
  whose convention is the opposite of ONNX's, so its running statistics follow each batch at 90 %.
  qatrun keeps the meaning (PyTorch momentum = 1 - ONNX momentum); a ConfigSection's
  ``MovingAverageMomentum`` still overrides it, in N2D2's (= PyTorch's) convention.
* An ``ActivationFunction`` (with its ``QAct*``) in the override section of a node that no Relu follows
  gives the cell that activation, ``<cell>_act``, as in a hand-made layer. N2D2 ignores the key there, so
  such an output (the BatchNorm before a residual Add) cannot be quantized, and a residual sum of an
  unquantized branch has no integer-only form; ``ActivationFunction=Linear`` + ``QAct=SAT`` in
  ``[res1_1_bn2]`` quantizes it. Where a Relu follows, the key is an error, as below.
* Errors where N2D2 is silent: an override section that names no node (with a did-you-mean over the node
  outputs), a geometry key in an override section, an ``ActivationFunction`` in the override section of
  a node a Relu follows (N2D2 reads that activation from the Relu's section), a graph input size that
  differs from ``[sp]`` (N2D2 warns; ``IgnoreInputSize=1`` runs the graph on the ``[sp]`` size).
  ``Transpose=1`` and ``CNTK=1`` are not supported.

Layout, one job per module (each imports only those listed before it, and none imports ``graph.py``):

    loading.py      the section's keys, reading and checking the file, onnx2torch without torchvision
    overrides.py    the override section a node reads, what it may set, and sections naming no node
    activations.py  activation nodes merged into the cell before them, or Activation cells
    planning.py     one pass before converting: skipped nodes, uses of each value, MatMul Fc cells
    handlers.py     one handler per op type that becomes a cell
    importer.py     the walk, node by node: convert, emit a cell or keep glue, record every value
    cell_type.py    ``Type=ONNX`` registered as a cell type: the hooks ``graph.build`` calls

Importing this package registers ``Type=ONNX`` (``graph.py`` imports it with the other cell types).
"""

from __future__ import annotations

from qatrun.net.onnx_import import cell_type  # noqa: F401  (registers Type=ONNX)
