-- Reserved for the external-identity change (issue 11), merged separately: the
-- migration runner refuses gaps in the numbering.
SELECT 1;
