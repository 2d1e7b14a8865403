"""The article's autoencoder script, step by step, in nanoae.

The TensorFlow 1 tutorial this project grows out of does, in order:

1. read MNIST (``input_data.read_data_sets``), pixels scaled to [0, 1];
2. set the hyper-parameters: learning rate 0.001, 1000 steps, batch 256, show every step;
3. lay out the network: 784 inputs, encoder layers of 784, 256 and 128 units, a decoder
   mirroring it (128, 256, 784), every weight and bias drawn by ``xavier_initializer()``;
4. define encoder and decoder as dense layers with ReLU after each, the output too;
5. loss: mean squared error between input and reconstruction; optimizer:
   ``tf.train.RMSPropOptimizer(0.001)``;
6. train: 1000 steps of ``mnist.train.next_batch(256)``, printing the loss each step;
7. plot 4 x 4 test digits beside their reconstructions.

Each step below is the same thing written with nanoae. (The tutorial's plot ran the
``decoder`` function object instead of the model; here the figure shows the model's
output.) Run it with:

    python examples/tutorial.py --data ../shared/data/mnist [--steps 1000] [--out tutorial.png]
"""

from __future__ import annotations

import argparse

import numpy as np

from nanoae import Autoencoder, Dense, RMSProp, Sequential
from nanoae.data import BatchSampler, load_dataset


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="directory of the MNIST files (default: $NANOAE_DATA, cache, download)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", default="tutorial.png", help="where to write the figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # 1. The data: 60,000 training and 10,000 test digits, flattened to 784 floats in [0, 1].
    train = load_dataset("mnist", "train", data_dir=args.data)
    test = load_dataset("mnist", "test", data_dir=args.data)

    # 2. Hyper-parameters, as in the article.
    learning_rate, num_steps, batch_size, display_step = 0.001, args.steps, 256, 1

    # 3. The network's sizes.
    num_input, num_hidden_1, num_hidden_2, num_hidden_3 = 784, 784, 256, 128

    # 4. Encoder and decoder: dense layers, ReLU after each, Xavier for weights AND biases.
    def layer(fan_in, fan_out):
        return Dense(fan_in, fan_out, "relu", init="glorot_uniform", bias_init="glorot_uniform")

    encoder = Sequential([layer(num_input, num_hidden_1), layer(num_hidden_1, num_hidden_2), layer(num_hidden_2, num_hidden_3)])
    decoder = Sequential([layer(num_hidden_3, num_hidden_3), layer(num_hidden_3, num_hidden_2), layer(num_hidden_2, num_input)])

    # 5. Loss and optimizer: MSE, and TF1's RMSProp (its mean square starts at ones).
    model = Autoencoder(encoder, decoder, loss="mse", optimizer=RMSProp(learning_rate, flavor="tf1"), seed=args.seed)

    # 6. Training: next_batch order (shuffled each epoch, continuing across epochs),
    #    seeded as model.fit seeds it: one draw from the model's generator.
    sampler = BatchSampler(len(train.images), batch_size, seed=int(model.rng.integers(2**63)))
    for step in range(1, num_steps + 1):
        batch_x = train.images[sampler.next_indices()]
        loss = model.train_step(batch_x)
        if step % display_step == 0 or step == 1:
            print(f"Step {step}: Minibatch Loss: {float(loss):.6f}")

    # 7. The figure: originals beside the model's reconstructions.
    originals = test.images[:16]
    reconstructed = model.backend.to_host(model.reconstruct(originals))
    print(f"test reconstruction MSE: {float(np.mean((model.backend.to_host(model.reconstruct(test.images)) - test.images) ** 2)):.6f}")
    try:
        from nanoae.plot import plot_reconstructions

        print("figure:", plot_reconstructions(originals, reconstructed, args.out, title="the tutorial, in nanoae"))
    except ImportError as exc:
        print(f"no figure: {exc}")


if __name__ == "__main__":
    main()
