-- An instance whose host's engine or swarm node does not answer is `unreachable`, not `failed`.
ALTER TABLE instances DROP CONSTRAINT instances_state_check;
ALTER TABLE instances ADD CONSTRAINT instances_state_check CHECK (state IN (
    'creating', 'available', 'backing_up', 'restoring', 'stopped', 'failed', 'unreachable'
));
