-- A run that passed the gate but was not promoted (an experiment, or `promote` 'never') is
-- `held`, not `rejected`: it may still be promoted by moving the registry's champion alias.
ALTER TABLE models DROP CONSTRAINT IF EXISTS models_status_check;
ALTER TABLE models ADD CONSTRAINT models_status_check
    CHECK (status IN ('trained', 'champion', 'held', 'rejected', 'published', 'retired'));
