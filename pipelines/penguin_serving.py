"""The demo's `serving_fn`: keeps `serving_default` and adds a `classify` signature.

FinalExporter loads the trained model, calls `serving_fn(loaded)` and saves a new
SavedModel with the signatures it returns (the TF2 form of an Estimator's
`serving_input_receiver_fn`).
"""

import tensorflow as tf

CLASSES = ('Adelie', 'Chinstrap', 'Gentoo')


def serving_fn(loaded):
    """Returns the export's signatures: the Trainer's, plus class names with the scores."""
    predict = loaded.signatures['serving_default']

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def classify(examples):
        (scores,) = predict(examples=examples).values()
        labels = tf.gather(tf.constant(CLASSES), tf.argmax(scores, axis=1))
        return {'scores': scores, 'label': labels}

    return {'serving_default': predict, 'classify': classify}
