; One basic residual block of a CIFAR ResNet (He et al. 2016, option B shortcuts):
;   conv3x3 - BN - ReLU - conv3x3 - BN, plus the shortcut (identity, or a 1x1 projection
;   when the block changes resolution or width), summed, then ReLU.
; Parameters: INPUT (section feeding the block), NB_FILTERS, STRIDES, PROJECTION_SHORTCUT (0|1).
; Base sections Conv_def, Bn_def, BnRelu_def and Proj_def come from the including INI.
[{{SECTION_NAME}}_conv1] Conv_def
Input={{INPUT}}
NbOutputs={{NB_FILTERS}}
Stride={{STRIDES}}

[{{SECTION_NAME}}_bn1] BnRelu_def
Input={{SECTION_NAME}}_conv1
NbOutputs=[{{SECTION_NAME}}_conv1]NbOutputs

[{{SECTION_NAME}}_conv2] Conv_def
Input={{SECTION_NAME}}_bn1
NbOutputs={{NB_FILTERS}}
Stride=1

[{{SECTION_NAME}}_bn2] Bn_def
Input={{SECTION_NAME}}_conv2
NbOutputs=[{{SECTION_NAME}}_conv2]NbOutputs
{% if PROJECTION_SHORTCUT == 1 %}
[{{SECTION_NAME}}_proj] Proj_def
Input={{INPUT}}
NbOutputs={{NB_FILTERS}}
Stride={{STRIDES}}
{% set SHORTCUT %}{{SECTION_NAME}}_proj{% endset %}
{% else %}
{% set SHORTCUT %}{{INPUT}}{% endset %}
{% endif %}

[{{SECTION_NAME}}_sum]
Input={{SECTION_NAME}}_bn2,{{SHORTCUT}}
Type=ElemWise
Operation=Sum
NbOutputs={{NB_FILTERS}}
ActivationFunction=Rectifier
