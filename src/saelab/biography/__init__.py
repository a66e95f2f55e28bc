"""A synthetic biography question-answering world and a small GPT-2 trained on it from scratch
(the setting of AlignSAE): seeded people with six attributes, biographies, questions with
held-out phrasings, and the model's answer accuracy and activations."""
