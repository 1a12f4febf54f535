"""Tools that make data, apart from the readers in :mod:`solider.data`: the procedural person-ReID
generator (``python -m solider.datatools.synthetic``, also the trainers' default data) and the KITTI /
ORA frames -> Market-1501 converter (``python -m solider.datatools.kitti_to_market``).

They read through :mod:`solider.data` (images, keypoint skeleton); :mod:`solider.data` never imports
them (tests/test_layout.py checks it).
"""
