; One MobileNet-v1 depthwise-separable block (Howard et al. 2017): a 3x3 depthwise convolution
; (one filter per input channel: Mapping.ChannelsPerGroup=1) and a 1x1 pointwise convolution, each
; followed by BatchNorm and ReLU.
;
; Parameters: INPUT (the feeding section), NB_CHANNELS (its channels), NB_OUTPUTS, STRIDE (of the
; depthwise convolution). Uses the base sections Conv_def and BnRelu_def of the including file.
; Creates [NAME_dw] [NAME_dw_bn] [NAME_pw] [NAME_pw_bn].

[{{SECTION_NAME}}_dw] Conv_def
Input={{INPUT}}
KernelDims=3 3
Padding=1
Stride={{STRIDE}}
NbOutputs={{NB_CHANNELS}}
Mapping.ChannelsPerGroup=1

[{{SECTION_NAME}}_dw_bn] BnRelu_def
Input={{SECTION_NAME}}_dw
NbOutputs={{NB_CHANNELS}}

[{{SECTION_NAME}}_pw] Conv_def
Input={{SECTION_NAME}}_dw_bn
KernelDims=1 1
NbOutputs={{NB_OUTPUTS}}

[{{SECTION_NAME}}_pw_bn] BnRelu_def
Input={{SECTION_NAME}}_pw
NbOutputs={{NB_OUTPUTS}}
