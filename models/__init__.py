"""The pretrained model zoo, installed as ``cnncli.zoo``: model files (``NAME.cnn``)
with their cards (``NAME.md``). ``cnncli models`` lists them."""
