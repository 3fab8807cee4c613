"""Fetching the reference's datasets and pretrained generators (``python -m fastp2p.datasets``).

catalog.py knows what exists and where (the reference's URLs and file names), fetch.py downloads one file over
HTTP (resuming a ``.part`` file, checking the size the server gave), archives.py checks an archive in full and
unpacks it without letting any member out of its folder. fastp2p.datasets is the command around them.
"""
