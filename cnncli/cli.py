"""The command-line tool: ``cnncli train | finetune | eval | predict | import | show | summary |
models``.

Each command parses its options, calls one job from ``cnncli.jobs`` and
prints the result. Expected failures (a missing file, a bad model file, bad
data, a class mismatch, a bad argument) print one line to stderr and exit
with code 1; a loss that stops being finite exits with code 3; Ctrl-C exits
with code 130 after telling where the last checkpoint is.
"""

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from cnncli import __version__, architectures, jobs
from cnncli.console import ConsoleReporter, _Run, fail, metrics_text, out, printable, say

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Train, fine-tune, evaluate and use convolutional neural networks on "
                       "the CPU.")


def _size(text):
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        fail(f"--size: expected HEIGHTxWIDTH or one number, got {text!r}")
    return tuple(parts)


DataArgument = Annotated[str, typer.Argument(
    help="A folder of images (root/<class>/<image>, or root/train|val|test/<class>/...), an "
         ".npz file with x/y or x_train/y_train/x_test/y_test, 'digits', 'mnist', or a "
         "dataset shipped with cnncli ('optdigits').")]
Threads = Annotated[Optional[int], typer.Option(help="Threads for the kernels "
                                                "(default: all cores).")]
SplitSeed = Annotated[int, typer.Option(help="Seed of the validation split, for data without "
                                             "a test or validation part (as train split "
                                             "it).")]
Seed = Annotated[int, typer.Option(help="Seed of initialisation, shuffling, splitting and "
                                        "augmentation.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing files.")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Leave out unreadable images and "
                                                          "out-of-range labels, and report "
                                                          "them, instead of stopping.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the results.")]
DaskAddress = Annotated[Optional[str], typer.Option(
    "--dask", help="Compute on a Dask cluster: a scheduler's address (tcp://host:8786) or "
                   "local:N for N worker processes here.")]
SyncBatchNorm = Annotated[bool, typer.Option(
    "--sync-batchnorm", help="Under mpirun: BatchNorm uses the statistics of the global batch "
                             "over every rank (default: each rank's own).")]
Classes = Annotated[Optional[str], typer.Option(help="Use only these classes of the data, "
                                                     "comma-separated (e.g. 0,1,2,3,4).")]
PerClass = Annotated[Optional[int], typer.Option(min=1, help="Train on at most this many "
                                                             "images of each class.")]
Checkpoints = Annotated[Optional[Path], typer.Option(help="Checkpoint folder (default: "
                                                          "OUTPUT-checkpoints).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")]


@app.command()
def train(
    data: DataArgument,
    arch: Annotated[str, typer.Option(help=f"Architecture: "
                                           f"{', '.join(architectures.ARCHITECTURES)}.")] = "lenet",
    output: Annotated[Path, typer.Option("--output", "-o", help="Model file to write.")] =
    Path("model.cnn"),
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="adam, adamw or sgd.")] = "adam",
    schedule: Annotated[str, typer.Option(help="constant, step, cosine or onecycle.")] =
    "constant",
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.0,
    val_split: Annotated[float, typer.Option(help="Fraction held out for validation when the "
                                                  "data has no validation part (0: none).")] = 0.1,
    shift: Annotated[int, typer.Option(min=0, help="Augmentation: random shifts of up to this "
                                                   "many pixels.")] = 0,
    flip: Annotated[bool, typer.Option("--flip", help="Augmentation: random horizontal "
                                                      "flips.")] = False,
    size: Annotated[Optional[str], typer.Option(help="Resize images to HEIGHTxWIDTH.")] = None,
    channels: Annotated[Optional[int], typer.Option(help="1 (grayscale) or 3 (RGB); default: "
                                                         "the data's.")] = None,
    checkpoints: Checkpoints = None, resume: Resume = False,
    classes: Classes = None, per_class: PerClass = None,
    seed: Seed = 0, threads: Threads = None, skip_bad: SkipBad = False, force: Force = False,
    quiet: Quiet = False, sync_batchnorm: SyncBatchNorm = False,
):
    """Train a network from scratch.

    Examples:

      cnncli train digits --epochs 5 -o digits.cnn

      cnncli train photos/ --arch vgg-small --size 32x32 --shift 2 --flip --schedule cosine

      cnncli train mnist --classes 0,1,2,3,4 -o mnist-0-4.cnn --resume
    """
    with _Run():
        result = jobs.train(data, arch=arch, output=output, epochs=epochs,
                            batch_size=batch_size, lr=lr, optimizer=optimizer,
                            schedule=schedule, momentum=momentum, weight_decay=weight_decay,
                            seed=seed, threads=threads, val_split=val_split, shift=shift,
                            flip=flip, size=_size(size), channels=channels,
                            skip_bad=skip_bad, checkpoints=checkpoints, resume=resume,
                            force=force, classes=classes, per_class=per_class,
                            sync_batchnorm=sync_batchnorm, reporter=ConsoleReporter(quiet))
        best = result.best
        say(f"saved {result.output}; checkpoints in {result.checkpoints} "
            f"(best: epoch {best['epoch']}, {metrics_text(best['metrics'])})")


@app.command()
def finetune(
    pretrained: Annotated[str, typer.Argument(help="A model file, or the name of a shipped "
                                                   "pretrained model (see 'cnncli models').")],
    data: DataArgument,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("finetuned.cnn"),
    head: Annotated[str, typer.Option(help="lbfgs: fit the new head to convergence on the "
                                           "frozen features (L-BFGS), then train the layers "
                                           "above the backbone; sgd: train the head alone, "
                                           "epoch by epoch.")] = "lbfgs",
    epochs: Annotated[Optional[int], typer.Option(
        min=0, help="Epochs of training the layers above the frozen backbone (with --head "
                    "sgd: the head). Default: enough for 200 steps, at least 1 (--head sgd: "
                    "5).")] = None,
    unfreeze_epochs: Annotated[int, typer.Option(min=0, help="Then train all layers this many "
                                                             "epochs.")] = 0,
    backbone_lr_factor: Annotated[float, typer.Option(help="Rate of the pretrained layers, "
                                                           "relative to --lr, when "
                                                           "unfrozen.")] = 0.1,
    freeze: Annotated[Optional[str], typer.Option(help="Freeze up to this layer (default: the "
                                                       "backbone below the classifier's "
                                                       "Dense layers; with --head sgd all "
                                                       "but the head; 'none' to train "
                                                       "everything).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="adam, adamw or sgd.")] = "adam",
    val_split: Annotated[Optional[float], typer.Option(
        help="Fraction held out for validation. Default: 0.1, or none where that would be "
             "under 100 images.")] = None,
    shift: Annotated[Optional[int], typer.Option(
        min=0, help="Augmentation: random shifts of up to this many pixels. Default: a tenth "
                    "of the image's side with fewer than 1000 training images (when layers "
                    "above the backbone train), else 0.")] = None,
    flip: Annotated[bool, typer.Option("--flip")] = False,
    checkpoints: Checkpoints = None, resume: Resume = False,
    classes: Classes = None, per_class: PerClass = None,
    seed: Seed = 0, threads: Threads = None, skip_bad: SkipBad = False, force: Force = False,
    quiet: Quiet = False, sync_batchnorm: SyncBatchNorm = False,
):
    """Transfer learning: replace the head of a pretrained model for the classes of DATA,
    fit it on the frozen network's features, fine-tune.

    Examples:

      cnncli finetune lenet-mnist optdigits -o digits.cnn

      cnncli finetune base.cnn photos/ --unfreeze-epochs 3

      cnncli finetune base.cnn photos/ --head sgd --epochs 10
    """
    with _Run():
        result = jobs.finetune(pretrained, data, output=output, epochs=epochs, head=head,
                               batch_size=batch_size, lr=lr, freeze=freeze,
                               unfreeze_epochs=unfreeze_epochs,
                               backbone_lr_factor=backbone_lr_factor, optimizer=optimizer,
                               seed=seed, threads=threads, val_split=val_split, shift=shift,
                               flip=flip, skip_bad=skip_bad, force=force, classes=classes,
                               per_class=per_class, checkpoints=checkpoints, resume=resume,
                               sync_batchnorm=sync_batchnorm, reporter=ConsoleReporter(quiet))
        say(f"saved {result.output}")


@app.command("features")
def extract_features(
    model: Annotated[str, typer.Argument(help="A model file or a pretrained model's name.")],
    data: DataArgument,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("features.npz"),
    upto: Annotated[Optional[str], typer.Option(help="The last layer kept (default: the one "
                                                     "below the head).")] = None,
    split: Annotated[str, typer.Option(help="all (default), train, val or test, as for "
                                            "eval.")] = "all",
    val_split: Annotated[float, typer.Option()] = 0.1,
    seed: SplitSeed = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    classes: Classes = None, dask: DaskAddress = None,
    threads: Threads = None, skip_bad: SkipBad = False, force: Force = False,
):
    """Write a layer's outputs for every image of DATA to an .npz: features (N, F), labels,
    classes, layer.

    Examples:

      cnncli features lenet-mnist optdigits -o optdigits-features.npz

      cnncli features resnet18.cnn photos/ --upto flatten_1 --dask local:2
    """
    with _Run():
        result = jobs.features(model, data, output=output, upto=upto, split=split,
                               batch_size=batch_size, threads=threads, skip_bad=skip_bad,
                               val_split=val_split, seed=seed, classes=classes, force=force,
                               dask=dask, reporter=ConsoleReporter())
        say(f"saved {result.output}: {result.shape[0]} x {result.shape[1]} features of "
            f"{result.layer}")


@app.command("eval")
def evaluate(
    model: Annotated[str, typer.Argument(help="A model file or a pretrained model's name.")],
    data: DataArgument,
    split: Annotated[Optional[str], typer.Option(
        help="test, val, train or all. Default: the test part, else the validation part; "
             "data without either is split as train splits it (--val-split, --seed).")] = None,
    val_split: Annotated[float, typer.Option()] = 0.1,
    seed: SplitSeed = 0,
    top_k: Annotated[int, typer.Option(min=1)] = 5,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the metrics "
                                                                     "to this file.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    classes: Classes = None, dask: DaskAddress = None,
    threads: Threads = None, skip_bad: SkipBad = False, force: Force = False,
):
    """Accuracy, top-k, per-class precision/recall/F1 and the confusion matrix.

    Examples:

      cnncli eval digits.cnn digits

      cnncli eval mnist.cnn mnist --json metrics.json

      cnncli eval mnist.cnn big.npz --dask tcp://scheduler:8786
    """
    with _Run():
        result = jobs.evaluate(model, data, split=split, top_k=top_k, batch_size=batch_size,
                               threads=threads, skip_bad=skip_bad, val_split=val_split,
                               seed=seed, classes=classes, json_path=json_path, force=force,
                               dask=dask, reporter=ConsoleReporter())
        _print_evaluation(result)


def _print_evaluation(result):
    say(f"{result.source}: {result.count} samples")
    say(f"accuracy {result.accuracy:.4f}   top-{result.top_k} accuracy "
        f"{result.top_k_accuracy:.4f}")
    table = Table("class", "precision", "recall", "f1", "support", box=None)
    for row in result.per_class:
        table.add_row(printable(row["class"], newlines=False), f"{row['precision']:.3f}",
                      f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    out.print(table)
    if len(result.classes) <= 20:
        names = [printable(name, newlines=False) for name in result.classes]
        matrix = Table("true \\ predicted", *names, box=None)
        for name, row in zip(names, result.confusion):
            matrix.add_row(name, *[str(v) if v else "." for v in row])
        out.print(matrix)
    if result.confused:
        say("most confused: " + ", ".join(
            f"{pair['true']} -> {pair['predicted']} ({pair['count']})"
            for pair in result.confused))


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="A model file or a pretrained model's name.")],
    inputs: Annotated[List[str], typer.Argument(help="Image files, folders of images, or one "
                                                     ".npz file.")],
    top_k: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    threads: Threads = None, skip_bad: SkipBad = False, dask: DaskAddress = None,
):
    """Class names and probabilities for images.

    Examples:

      cnncli predict digits.cnn photo.png other.jpg

      cnncli predict mnist.cnn samples/ --top-k 5
    """
    with _Run():
        result = jobs.predict(model, inputs, top_k=top_k, batch_size=batch_size,
                              threads=threads, skip_bad=skip_bad, dask=dask,
                              reporter=ConsoleReporter())
        for name, top in zip(result.names, result.top):
            say(f"{printable(name, newlines=False)}: "
                + ", ".join(f"{printable(label, newlines=False)} {p:.3f}" for label, p in top))


@app.command()
def demo(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Keep the fine-tuned "
                                                                          "model here.")] = None,
    threads: Threads = None, force: Force = False, quiet: Quiet = False,
):
    """Transfer learning on shipped defaults, no download: fine-tune lenet-mnist (trained by
    cnncli on MNIST) on the optdigits images that ship with cnncli, then evaluate it on their
    test part.

    It does the same as:

      cnncli finetune lenet-mnist optdigits -o optdigits.cnn

      cnncli eval optdigits.cnn optdigits
    """
    with _Run():
        if not quiet:
            say(f"Fine-tuning {jobs.DEMO_MODEL} on {jobs.DEMO_DATA} with the default options: "
                "the convolutional layers stay frozen, a new head is fitted to their features, "
                "then the dense layers train on the new data.")
        result = jobs.demo(output=output, threads=threads, force=force,
                           reporter=ConsoleReporter(quiet))
        _print_evaluation(result)
        if output is not None:
            say(f"saved {output}")


@app.command("import")
def import_weights(
    source: Annotated[str, typer.Argument(help="torchvision-format weights: a PyTorch .pt/.pth "
                                               "file (read without torch, nothing in it is "
                                               "run) or a .safetensors file.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Model file to "
                                                   "write (default: SOURCE's name with "
                                                   ".cnn).")] = None,
    arch: Annotated[Optional[str], typer.Option(help="resnet18, resnet34 or resnet50 "
                                                     "(default: recognised from the "
                                                     "weights).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Class names, comma-separated or a "
                                                        "file with one per line (default: "
                                                        "ImageNet's for 1000 outputs).")] = None,
    size: Annotated[Optional[str], typer.Option(help="Input HEIGHTxWIDTH (default "
                                                     "224x224).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean (default ImageNet's: "
                                                     "0.485,0.456,0.406).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std (default ImageNet's: "
                                                    "0.229,0.224,0.225).")] = None,
    force: Force = False,
):
    """Convert pretrained ResNet-18/34/50 weights from the PyTorch ecosystem (torchvision's
    names and layout) into a cnncli model file, without PyTorch.

    Examples:

      cnncli import resnet18-f37072fd.pth -o resnet18.cnn

      cnncli import resnet50.safetensors --classes labels.txt --size 160x160
    """
    with _Run():
        result = jobs.import_model(source, output=output, arch=arch, classes=classes,
                                   size=_size(size), mean=mean, std=std, force=force)
        say(str(result.report))
        model = result.model
        say(f"saved {result.output} ({sum(model.count_parameters()):,} parameters, "
            f"input {'x'.join(map(str, model.input_shape))}, "
            f"{len(model.classes) if model.classes else 'unnamed'} classes)")


@app.command()
def summary(
    model: Annotated[str, typer.Argument(help="A model file, a pretrained model's name, or an "
                                              "architecture name.")],
    input_shape: Annotated[Optional[str], typer.Option(help="For an architecture: C,H,W "
                                                            "(default: its usual input).")] = None,
    classes: Annotated[int, typer.Option(min=1, help="For an architecture: outputs.")] = 10,
):
    """The architecture table: layers, output shapes, parameters (trainable and frozen).

    Examples:

      cnncli summary digits.cnn

      cnncli summary alexnet --classes 1000
    """
    with _Run():
        built = jobs.describe(model, input_shape=input_shape, classes=classes)
        say(built.summary(print_fn=None))
        if built.classes:
            say(f"Classes: {', '.join(built.classes[:20])}"
                + (" ..." if len(built.classes) > 20 else ""))
        if built.preprocessing is not None:
            say(f"Preprocessing: {built.preprocessing}")


show_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Pictures of a network, written as PNG files: filters, feature "
                            "maps, training curves, confusion matrices.")
app.add_typer(show_app, name="show")
PictureOutput = Annotated[Optional[Path], typer.Option("--output", "-o", help="PNG file to "
                                                       "write (default: beside the model).")]
ModelArgument = Annotated[str, typer.Argument(help="A model file or a pretrained model's "
                                                   "name.")]


@show_app.command("filters")
def show_filters(
    model: ModelArgument,
    layer: Annotated[Optional[str], typer.Option(help="The convolutional layer (default: the "
                                                      "first); inside blocks as "
                                                      "layer1_0.body.conv1.")] = None,
    channel: Annotated[Optional[int], typer.Option(help="For kernels over other than 1 or 3 "
                                                        "channels: draw this input channel "
                                                        "(default: their mean).")] = None,
    output: PictureOutput = None, force: Force = False,
):
    """The learned kernels of a convolutional layer as a grid, each normalised on its own;
    RGB kernels in colour.

    Examples:

      cnncli show filters digits.cnn

      cnncli show filters resnet18.cnn -o filters.png
    """
    with _Run():
        path, grid = jobs.show_filters(model, layer=layer, channel=channel, output=output,
                                       force=force)
        say(f"wrote {path} ({grid.title}; {len(grid.cells)} cells)")


@show_app.command("features")
def show_features(
    model: ModelArgument,
    image: Annotated[str, typer.Argument(help="The image file to run through the model.")],
    layer: Annotated[Optional[List[str]], typer.Option(help="A layer to show (repeatable; "
                                                            "default: every convolutional "
                                                            "and pooling layer).")] = None,
    max_maps: Annotated[int, typer.Option(min=1, help="At most this many maps per "
                                                      "layer.")] = 256,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder for the PNG "
                                                   "files (default: beside the model).")] = None,
    force: Force = False,
):
    """The feature maps each convolutional and pooling layer computes for one image: one
    grid per layer, labelled with the layer's name and output shape.

    Examples:

      cnncli show features digits.cnn seven.png

      cnncli show features resnet18.cnn cat.jpg --layer conv1 --layer layer4_1
    """
    with _Run():
        written = jobs.show_features(model, image, layers=layer or None, output=output,
                                     force=force, max_maps=max_maps)
        for path, grid in written:
            say(f"wrote {path} ({grid.title})")


@show_app.command("history")
def show_history(
    run: Annotated[str, typer.Argument(help="A model written by train or finetune (its "
                                            "history is beside it), the history file, or a "
                                            "checkpoint.")],
    output: PictureOutput = None, force: Force = False,
):
    """Loss and accuracy per epoch, training and validation, from a run's history.

    Examples:

      cnncli show history digits.cnn

      cnncli show history digits.cnn-checkpoints/last.cnn -o so-far.png
    """
    with _Run():
        path, epochs = jobs.show_history(run, output=output, force=force)
        say(f"wrote {path} ({len(epochs)} epochs)")


@show_app.command("confusion")
def show_confusion(
    model: ModelArgument,
    data: DataArgument,
    split: Annotated[Optional[str], typer.Option(help="test, val, train or all (as for "
                                                      "eval).")] = None,
    normalize: Annotated[bool, typer.Option("--normalize", help="Show each row as fractions "
                                                                "of its true class.")] = False,
    val_split: Annotated[float, typer.Option()] = 0.1,
    seed: SplitSeed = 0,
    classes: Classes = None,
    output: PictureOutput = None, threads: Threads = None, skip_bad: SkipBad = False,
    force: Force = False,
):
    """The confusion matrix of a model on data as a labelled heat map, beside the table
    that eval prints.

    Examples:

      cnncli show confusion digits.cnn digits

      cnncli show confusion mnist.cnn mnist --normalize -o confusion.png
    """
    with _Run():
        path, result = jobs.show_confusion(model, data, output=output, force=force,
                                           normalize=normalize, split=split,
                                           val_split=val_split, seed=seed, classes=classes,
                                           threads=threads, skip_bad=skip_bad,
                                           reporter=ConsoleReporter())
        _print_evaluation(result)
        say(f"wrote {path}")


@app.command()
def models():
    """The shipped pretrained models and what each was trained on."""
    found = jobs.list_models()
    if not found:
        say("no pretrained models are installed")
    for name, about in found:
        say(f"{name}: {about}")


def version_callback(value: bool):
    if value:
        from cnncli.functional import direct_kernel_variant, openmp_enabled
        say(f"cnncli {__version__} (convolution kernel: {direct_kernel_variant()}, "
            f"OpenMP: {'yes' if openmp_enabled() else 'no'})")
        raise typer.Exit()


VERSION_HELP = "Show the version and which variant of the compiled kernels runs."


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=version_callback,
                                               is_eager=True, help=VERSION_HELP)] = False):
    """cnncli: convolutional neural networks on the CPU."""


def run():
    app(prog_name="cnncli")


if __name__ == "__main__":
    sys.exit(run())
