"""Optimiser, train state, packing and jitted (sharded) train / eval steps."""

from reasoner.train.epochs import minibatches, run_epochs
from reasoner.train.optim import (OptimConfig, as_optim_config, decay_mask, learning_rate_of,
                                  make_optimizer, make_schedule)
from reasoner.train.packing import pack_sequences, pad_sequences
from reasoner.train.state import (TrainState, init_train_state, mixed_precision, model_params,
                                  train_state_shardings)
from reasoner.train.step import (batch_shardings, make_eval_fn, make_train_step,
                                 micro_batches_for, micro_batches_of)
