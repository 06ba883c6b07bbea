"""nerfstudio ``find-field`` method: a radiance field with a FIND feature head (needs nerfstudio).

* :mod:`.config` — ``find_field_method`` (the ``nerfstudio.method_configs`` entry point)
* :mod:`.model` — FindFieldModel (nerfacto-style field + feature head, no LPIPS)
* :mod:`.data` — dataparser / dataset / datamanager reading cached feature maps
* :mod:`.sample` — query a trained field: relevancy images and a feature map for :mod:`find_core.field`
"""
