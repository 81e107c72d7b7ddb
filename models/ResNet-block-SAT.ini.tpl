; One ResNet basic block for SAT phase 2 (quantized): ResNet-block.ini.tpl with activation quantizers.
;
; Parameters (properties of the instantiating section [NAME@ResNet-block-SAT.ini.tpl]):
;   INPUT       the section feeding the block
;   NB_FILTERS  output channels of the block
;   STRIDE      1, or 2 to halve the width and height; then the shortcut is a 1x1 convolution with
;               BatchNorm (projection), else the identity
; Uses the base sections of the including file: Conv3x3_def, Conv1x1_def (quantized weights), BnQ_def
; (BatchNorm + SAT activation quantizer: the quantizer's clip [0, alpha] is the ReLU), BnSum_def (the
; BatchNorm ending a branch, before the sum), SumQ_def (the sum + SAT activation quantizer, again the ReLU).
; Creates the same sections as ResNet-block.ini.tpl, so phase 1's weights load by name.

[{{SECTION_NAME}}_conv1] Conv3x3_def
Input={{INPUT}}
NbOutputs={{NB_FILTERS}}
Stride={{STRIDE}}

[{{SECTION_NAME}}_bn1] BnQ_def
Input={{SECTION_NAME}}_conv1
NbOutputs={{NB_FILTERS}}

[{{SECTION_NAME}}_conv2] Conv3x3_def
Input={{SECTION_NAME}}_bn1
NbOutputs={{NB_FILTERS}}
Stride=1

[{{SECTION_NAME}}_bn2] BnSum_def
Input={{SECTION_NAME}}_conv2
NbOutputs={{NB_FILTERS}}

{% if STRIDE != 1 %}
[{{SECTION_NAME}}_proj] Conv1x1_def
Input={{INPUT}}
NbOutputs={{NB_FILTERS}}
Stride={{STRIDE}}

[{{SECTION_NAME}}_proj_bn] BnSum_def
Input={{SECTION_NAME}}_proj
NbOutputs={{NB_FILTERS}}
{% endif %}

[{{SECTION_NAME}}_sum] SumQ_def
Input={{SECTION_NAME}}_bn2,{% if STRIDE != 1 %}{{SECTION_NAME}}_proj_bn{% else %}{{INPUT}}{% endif %}
NbOutputs={{NB_FILTERS}}
