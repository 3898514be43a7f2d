"""Default configuration: every key dcgan_jax reads, with what it means.

Presets import this file and override a few keys. Run any of them as

  python launch.py --config=configs/<preset>.py --workdir=DIR [--config.KEY=VALUE ...]

The defaults are the paper's 64x64 model (Radford et al., 2015, section 3 and
figure 1) on the bundled scikit-learn digits; `configs/celeba.py` is the
paper's set-up on faces.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # --- Randomness --------------------------------------------------------
  # Root of every PRNG key (init, per-step noise, sample z) and of the data
  # order. Same seed + same config = same numbers.
  config.seed = 0
  # Train K GANs at once, with seeds seed, seed + 1, ..., seed + K - 1, in
  # one compiled program. Each gets its own WORKDIR/seed_<s>/ (checkpoints,
  # TensorBoard logs, samples, config): the workdir its single-seed run
  # would have.
  config.num_seeds = 1
  # How the K GANs share the program: 'unroll' (each one's arithmetic is
  # exactly its single-seed run's: bitwise identical on CPU) or 'vmap' (one
  # batched op per layer for all seeds; equal up to float round-off).
  config.ensemble = 'unroll'

  # --- Data --------------------------------------------------------------
  # A TFDS name ('mnist', 'cifar10', 'celeb_a', 'lsun/bedroom',
  # 'downsampled_imagenet/64x64', ...), 'digits' (scikit-learn's bundled
  # 8x8 digits, built as a local TFDS data set), 'scenes' (synthetic rooms
  # with windows at known boxes, also built locally), 'folder:/path/to/images'
  # (a directory tree of PNG/JPEG/BMP/GIF images) or 'idx:DIR' (MNIST-format
  # IDX files: train-* for split 'train', t10k-* for 'test'). The folder and
  # DIR may be gs:// URLs ('folder:gs://bucket/images').
  config.dataset = 'digits'
  # TFDS split to train on (ignored for 'folder:').
  config.split = 'train'
  # Feature holding the image in the TFDS examples.
  config.image_key = 'image'
  # Where TFDS keeps prepared data sets, a local path or a gs:// URL (given
  # to TFDS as is); None = TFDS's default (~/tensorflow_datasets or
  # $TFDS_DATA_DIR).
  config.data_dir = ml_collections.config_dict.placeholder(str)
  # Let TFDS download and prepare a data set that is not in data_dir.
  config.download = True
  # Square output resolution: a power of two from 16 to 128 for the 'dcgan'
  # architecture, 28 for 'tf_tutorial' and 'conv28'.
  config.image_size = 64
  # 1 (grayscale) or 3 (RGB); images are converted to this.
  config.num_channels = 3
  # 'center': largest centred square; 'celeba': the centred 108x108 face
  # crop used by the reference DCGAN code on 178x218 CelebA; 'none': resize
  # the whole image (aspect ratio not kept).
  config.crop = 'center'
  # Decoded, cropped and resized uint8 images are kept in memory ('memory')
  # or written once to an .npy file and memory-mapped ('disk', for data sets
  # larger than RAM such as LSUN).
  config.cache = 'memory'
  # Directory for the 'disk' cache. Must be local, not a URL: the images are
  # memory-mapped from it. None = WORKDIR/data_cache, or ~/.cache/dcgan_jax/data
  # when the workdir is a gs:// URL. With several processes only process 0
  # decodes; it shares the array in WORKDIR/data_cache, which the others read
  # (from a gs:// workdir, downloaded once into their own cache_dir).
  config.cache_dir = ml_collections.config_dict.placeholder(str)
  # Class-conditional G and D (the authors' MNIST model): the one-hot label
  # is joined to z and, as constant feature maps, to G's hidden layers and
  # to D's input, hidden layers and last features. Needs labels: 'digits',
  # 'idx:DIR', a TFDS data set with a class-label feature `label_key`, or
  # 'folder:' with one subfolder per class (its label = the subfolder's
  # rank in sorted order). Fake images get uniformly drawn labels. The
  # trainer sets model.num_classes from the data; sample grids have a row
  # per class, `sample --labels` picks classes, and evaluate reports
  # conditional_accuracy.
  config.conditional = False
  config.label_key = 'label'
  # 'error': stop on unreadable/corrupt images in a 'folder:' data set,
  # naming them; 'skip': leave them out with a warning.
  config.bad_images = 'error'

  # --- Model -------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  # 'dcgan' (the paper's all-convolutional family), 'tf_tutorial' (the
  # TensorFlow DCGAN tutorial's 28x28 MNIST model), 'conv28' (28x28 model
  # from a 1x1 z by a 7x7 valid transposed conv), 'mlp' (plain MLP GAN).
  config.model.arch = 'dcgan'
  # Dimension of z and its distribution: 'uniform' in [-1, 1] (paper) or
  # 'normal'.
  config.model.z_dim = 100
  config.model.z_dist = 'uniform'
  # Channels of G's 4x4 layer; halved at every upsampling (paper: 1024).
  config.model.g_width = 1024
  # Channels of D's first conv; doubled at every downsampling, so D's 4x4
  # layer has as many channels as G's (paper mirror: 128 -> 1024 at 64x64).
  config.model.d_width = 128
  # Convolution kernel size: 4 or 5 (paper code: 5; PyTorch tutorial: 4).
  config.model.kernel_size = 5
  # 'transpose' (fractionally-strided conv, paper) or 'resize_conv'
  # (upsample, then a stride-1 conv: no checkerboard artefacts).
  config.model.upsample = 'transpose'
  # Upsampling for 'resize_conv': 'nearest' or 'bilinear'.
  config.model.resize_method = 'nearest'
  # BatchNorm in G (all but the output layer) and D (all but the input
  # layer), as in the paper.
  config.model.g_batchnorm = True
  config.model.d_batchnorm = True
  # How stride-2 (transposed) convolutions are computed; the parameters and
  # the function are the same, only speed and float round-off differ.
  # 'phases': as stride-1 convolutions and per-tap matrix products without
  # inserted zeros (dcgan_jax/networks/strided.py; several times faster on CPU);
  # 'xla': flax's nn.Conv / nn.ConvTranspose; 'auto': 'phases' on CPU,
  # 'xla' on GPU/TPU.
  config.model.conv_impl = 'auto'
  # 'bfloat16': mixed precision; convolutions, matrix products and
  # activations in bfloat16, while parameters, optimizer state, BatchNorm
  # statistics (and their reductions), G's tanh output, D's logits and the
  # losses stay float32. For GPUs and TPUs; 'float32' is the paper's.
  config.model.compute_dtype = 'float32'
  # BatchNorm running-average momentum (PyTorch's 0.1 = Flax's 0.9) and eps.
  config.model.bn_momentum = 0.9
  config.model.bn_epsilon = 1e-5
  # Slope of D's LeakyReLU.
  config.model.leaky_slope = 0.2
  # Weights drawn from N(0, init_std); biases and BN shifts start at 0, BN
  # scales at N(1, init_std) as in the reference code.
  config.model.init_std = 0.02
  # Dropout in D of the 'tf_tutorial' architecture.
  config.model.dropout_rate = 0.3
  # Hidden width of the 'mlp' architecture.
  config.model.mlp_hidden = 128
  # Classes of a conditional model: 0 for config.conditional=False; with
  # conditional=True, 0 = from the data set's labels (the trainer records
  # the number found in config.json), or the number the data must have.
  config.model.num_classes = 0
  # 'normal': kernels from N(0, init_std), BatchNorm scales from N(1,
  # init_std) (the paper's code); 'glorot_uniform': Keras' defaults, as the
  # TensorFlow tutorial (Glorot-uniform kernels, BatchNorm scales 1).
  config.model.init = 'normal'
  # Spectral normalisation of every D layer (Miyato et al., 2018; one power
  # iteration per training pass of D). G is never normalised.
  config.model.d_spectral_norm = False

  # --- Training ----------------------------------------------------------
  # Examples per step, summed over all devices of all hosts; must divide by
  # the number of devices (paper: 128).
  config.global_batch_size = 128
  config.num_train_steps = 50_000
  # 'adam' for both networks (paper: lr 2e-4, beta1 0.5, beta2 0.999) or
  # 'sgd' with `sgd_momentum` (the baseline the paper moved away from).
  config.optimizer = 'adam'
  config.sgd_momentum = 0.0
  config.g_learning_rate = 2e-4
  config.d_learning_rate = 2e-4
  config.b1 = 0.5
  config.b2 = 0.999
  # Adam's epsilon (paper code and PyTorch: 1e-8; Keras, so the TensorFlow
  # tutorial: 1e-7).
  config.adam_eps = 1e-8
  # L2 regularisation: weight_decay * parameter added to every parameter's
  # gradient (BatchNorm scales and biases too) before the optimizer, as the
  # authors' Theano code (1e-5 there). 0: off (the paper's text).
  config.weight_decay = 0.0
  # Learning rates: 'constant' (paper) or 'linear' (decayed to 0 at
  # num_train_steps, which then shapes the trajectory: a resume may not
  # change it).
  config.lr_schedule = 'constant'
  # Objective: 'bce' (the paper: D's binary cross-entropy, G's
  # non-saturating loss), 'hinge', 'least_squares' (LSGAN) or 'wgan_gp'
  # (WGAN with gradient penalty; needs model.d_batchnorm=False). Formulas in
  # dcgan_jax/core/losses.py.
  config.loss = 'bce'
  # Weight of WGAN-GP's gradient penalty (Gulrajani et al., 2017: 10).
  config.gp_weight = 10.0
  # 'sequential': D's update, then G's against the updated D (the paper's
  # code); 'simultaneous': both from the same pass of D over the same fake
  # batch (the TensorFlow tutorial).
  config.update_order = 'sequential'
  # Exponential moving average of G's parameters and BatchNorm statistics,
  # kept in the state and checkpointed: ema <- decay * ema + (1 - decay) * G
  # after every step (0: off; 0.999 and 0.9999 are usual). sample, evaluate,
  # visualize and export then use it (their --generator=raw picks G itself),
  # and the sample grids show both. Until ema_start_step steps are done it
  # copies G instead of averaging.
  config.ema_decay = 0.0
  config.ema_start_step = 0
  # Target for real examples in D's loss; 0.9 = one-sided label smoothing
  # (Salimans et al., 2016). Paper: 1.0. Only for loss='bce'.
  config.real_label = 1.0
  # An update (of D or of G) whose loss, gradients or result is not finite
  # on some device: 'stop' the run with an error naming the steps and the
  # last good checkpoint, or 'skip' it (that network keeps its state for the
  # step; counts are logged as d_nonfinite / g_nonfinite, and a log interval
  # in which every update of one network was skipped stops the run). A
  # non-finite state is never saved either way.
  config.nonfinite = 'stop'
  # BatchNorm statistics over the whole global batch (True, as the paper's
  # single-GPU batch of 128) or per device (False).
  config.sync_batchnorm = True
  # Device-count-invariant mode (0: off). V > 0 cuts the global batch into V
  # shards of global_batch_size / V examples: each shard is trained through
  # the same program whatever device holds it, and gradients, BatchNorm
  # statistics and metrics are averaged over the V shards in one fixed
  # order, so every device count dividing V (1, 2, 4, 8 for V=8) gives the
  # same bits, and a run may resume on another such count bit-exactly.
  # BatchNorm normalises each shard with its own statistics, so V > 1 needs
  # sync_batchnorm=False. Costs speed (README, "Reproducing a run").
  config.reduction_shards = 0
  # On GPUs, make XLA pick deterministic kernels (--xla_gpu_deterministic_ops):
  # bitwise-repeatable runs at some speed cost. No effect on CPU and TPU,
  # which are deterministic already.
  config.deterministic_gpu = False

  # --- Logging, samples, checkpoints -------------------------------------
  config.log_every_steps = 100
  # Sample grid (TensorBoard image + WORKDIR/samples/*.png) from a fixed z.
  config.sample_every_steps = 1000
  config.num_sample_images = 64
  # Sample with BatchNorm running averages ('running') or with the
  # statistics of the sample batch itself ('batch', as the reference code).
  config.sample_batchnorm = 'running'
  # GAN health (warnings + TensorBoard scalars, the run goes on): D wins
  # outright (mean D(x) > 0.99, D(G(z)) < 0.01) for this many log intervals
  # in a row; the fixed-z samples are less diverse than this fraction of
  # real images (mean pairwise distance), i.e. mode collapse. The collapse
  # warning waits until the samples have once been diverse or this many
  # steps have passed: at the start G's samples are all alike.
  config.monitor_d_wins_window = 5
  config.monitor_collapse_ratio = 0.2
  config.monitor_collapse_warmup_steps = 1000
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3

  # --- Evaluation during training ----------------------------------------
  # Every eval_every_steps (and at the last step) score the generator as
  # `python -m dcgan_jax.evaluate` does: WORKDIR/eval/report_step_<s>.json
  # and TensorBoard scalars eval/... in WORKDIR/eval. 0: never.
  config.eval_every_steps = 0
  # Comma-separated: 'classifier' (labelled data sets; offline),
  # 'inception' (FID, KID, IS; needs the FID Inception weights),
  # 'memorization' (nearest training images of samples, PNGs in eval/)
  # and/or 'checkerboard' (periodic artefacts of stride-2 upsampling in the
  # samples' power spectrum against real images'; offline).
  config.eval_metrics = 'classifier'
  config.eval_num_samples = 5000
  # The pytorch-fid Inception weights file; '' = $DCGAN_FID_WEIGHTS or the
  # cache (see dcgan_jax/evaluation/inception.py).
  config.inception_weights = ''

  return config
