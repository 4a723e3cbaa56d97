"""Pure tensor/array functions shared by inference, training, export and evaluation."""
