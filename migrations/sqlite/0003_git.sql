-- Runs on a branch of a project (workspaces): the `git` frame's object as JSON text
-- ({"project","branch","head","committed","pushed","error"}), set when the run ends.
ALTER TABLE runs ADD COLUMN git TEXT;
