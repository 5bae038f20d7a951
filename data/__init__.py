"""The datasets that ship with cnncli, installed as ``cnncli.sample_data``: image
folders (``NAME/train|test/<class>/<image>.png``) that ``load_dataset`` and the
command-line tool find by ``NAME`` from any working directory."""
