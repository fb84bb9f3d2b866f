"""The lab: code that uses the library to run and report studies (the seed study, tuning); the library never
imports it."""
