; One ResNet basic block (He et al. 2016): two 3x3 convolutions with BatchNorm, plus the shortcut.
;
; Parameters (properties of the instantiating section [NAME@ResNet-block.ini.tpl]):
;   INPUT       the section feeding the block
;   NB_FILTERS  output channels of the block
;   STRIDE      1, or 2 to halve the width and height; then the shortcut is a 1x1 convolution with
;               BatchNorm (projection), else the identity
; Uses the base sections Conv3x3_def, Conv1x1_def, BnRelu_def, Bn_def of the including file.
; Creates [NAME_conv1] [NAME_bn1] [NAME_conv2] [NAME_bn2] ([NAME_proj] [NAME_proj_bn]) [NAME_sum].

[{{SECTION_NAME}}_conv1] Conv3x3_def
Input={{INPUT}}
NbOutputs={{NB_FILTERS}}
Stride={{STRIDE}}

[{{SECTION_NAME}}_bn1] BnRelu_def
Input={{SECTION_NAME}}_conv1
NbOutputs={{NB_FILTERS}}

[{{SECTION_NAME}}_conv2] Conv3x3_def
Input={{SECTION_NAME}}_bn1
NbOutputs={{NB_FILTERS}}
Stride=1

[{{SECTION_NAME}}_bn2] Bn_def
Input={{SECTION_NAME}}_conv2
NbOutputs={{NB_FILTERS}}

{% if STRIDE != 1 %}
[{{SECTION_NAME}}_proj] Conv1x1_def
Input={{INPUT}}
NbOutputs={{NB_FILTERS}}
Stride={{STRIDE}}

[{{SECTION_NAME}}_proj_bn] Bn_def
Input={{SECTION_NAME}}_proj
NbOutputs={{NB_FILTERS}}
{% endif %}

; The ReLU after the sum is the activation of the ElemWise cell.
[{{SECTION_NAME}}_sum]
Input={{SECTION_NAME}}_bn2,{% if STRIDE != 1 %}{{SECTION_NAME}}_proj_bn{% else %}{{INPUT}}{% endif %}
Type=ElemWise
Operation=Sum
NbOutputs={{NB_FILTERS}}
ActivationFunction=Rectifier
