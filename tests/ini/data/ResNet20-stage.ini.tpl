; A stage of NB_BLOCKS residual blocks b0, b1, ...: the block template instantiated once per block.
{% for i in range({{NB_BLOCKS}}) %}
[{{SECTION_NAME}}b{{i}}@ResNet20-block.ini.tpl]
INPUT={% if i == 0 %}{{INPUT}}{% else %}{{SECTION_NAME}}b$({{i}} - 1)_sum{% endif %}
NB_FILTERS={{NB_FILTERS}}
STRIDES={% if i == 0 %}{{STRIDES}}{% else %}1{% endif %}
PROJECTION_SHORTCUT={% if i == 0 %}{{PROJECTION_SHORTCUT}}{% else %}0{% endif %}
{% endfor %}
