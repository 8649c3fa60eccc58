"""STS-B-DIR, sentence-pair similarity scores in [0, 5]: GloVe vectors, a BiLSTM encoder, a regressor
trained with MSE and the SRL terms on a projection head; validation every 400 steps with early
stopping. `python train/sts_b.py --help` lists the flags, released checkpoints included
(--evaluate FILE --released_vocab VOCAB). Its record: srl_ext.training.benchmarks.STS_B.
"""

import sys

from srl_ext.training.run import command, driver

parser, build, main = driver("sts_b")  # parser(); build(config) -> (task, model, datasets); main(argv) -> test table

if __name__ == "__main__":
    sys.exit(command(main))
